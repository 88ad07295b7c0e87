"""slimkit's integer codes (the autoround quantizer's) written into the OpenVINO IR as compressed weights."""

import json

import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("auto_round")

from slimkit_openvino import MODEL_XML, OpenVinoConfig, OpenVinoExporter

from slimkit import ConfigError
from slimkit.deploy.holdings import int_weight_modules
from slimkit.evaluation import model_logits
from slimkit.testing import random_token_state

torch.set_num_threads(1)


def _quantized(**values):
    """The tiny model after the autoround quantizer (round-to-nearest: fast), its codes in memory."""
    from slimkit_autoround import AutoRoundConfig, AutoRoundQuantizer

    state = random_token_state()
    AutoRoundQuantizer(AutoRoundConfig(method="rtn", **values)).apply(state)
    return state


def _export(tmp_path, state, **config):
    out = tmp_path / "export"
    out.mkdir(parents=True)
    facts = OpenVinoExporter(OpenVinoConfig(**config)).export(tmp_path, state.model, state.tokenizer, out)
    return facts, OpenVinoExporter.open(out, threads=1), out


def _stored_types(out):
    """{element type: count} of the IR's integer weight constants (grouped [out, in / g, g] or per row [out, in])."""
    import openvino

    counts = {}
    for op in openvino.Core().read_model(str(out / MODEL_XML)).get_ops():
        if op.get_type_name() != "Constant":
            continue
        kind = op.get_element_type().get_type_name()
        grouped = kind in ("i4", "u4", "i8", "u8") and len(op.get_output_shape(0)) in (2, 3)  # 2: one group a row
        if grouped and not op.get_friendly_name().endswith("zero_point"):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


@pytest.mark.parametrize("values,types", [
    ({"group_size": 32, "embedding": "int8"}, {"i4": 28, "i8": 1}),   # llama.cpp Q4_0's layout: the table int8
    ({"group_size": 64, "embedding": "int4"}, {"i4": 29}),
    ({"group_size": 32, "embedding": "int8", "embedding_group_size": -1}, {"i4": 28, "i8": 1}),  # NNCF's per-row table
    ({"group_size": 32, "sym": False}, {"u4": 28}),                    # asymmetric: unsigned codes and zero points
    ({"bits": 8, "group_size": 64}, {"i8": 28}),
])
def test_codes_are_carried_exactly(tmp_path, values, types):
    """weights=auto with dynamic quantization off: the runtime computes the autoround model's logits (every carried
    weight is exactly its codes times its float16 scales), nothing is re-quantized, and the IR stores the codes in
    integer containers of their width."""
    state = _quantized(**values)
    codes = int_weight_modules(state.model)
    facts, session, out = _export(tmp_path, state, dynamic_quantization="off")
    assert facts["requantized"] is False and facts["requantized_tensors"] == 0
    assert facts["carried_tensors"] == len(codes) == sum(types.values())
    assert "not re-quantized" in facts["scheme"] and f"groups of {values['group_size']}" in facts["scheme"]
    assert _stored_types(out) == types
    table_per_row = "1 weight int8 symmetric, one float16 scale per row" in facts["scheme"]
    assert table_per_row == (values.get("embedding_group_size") == -1)
    probe = state.data.eval[:2, :32]
    diff = (session.logits(probe) - model_logits(state.model, probe)).abs().max().item()
    assert diff < 1e-5, diff
    assert json.loads((out / "slimkit_export.json").read_text())["carried"] == sorted(codes)


def test_float_weights_stay_fp32_under_auto_and_nncf_takes_them_under_int8(tmp_path):
    """The tied table left float by the quantizer (embedding=float): weights=auto keeps it fp32 (as slimkit left it),
    weights=int8 lets NNCF compress it, and the carried codes still win over NNCF's for the decoder."""
    state = _quantized(group_size=32)
    facts, session, out = _export(tmp_path / "auto", state, dynamic_quantization="off")
    assert facts["requantized"] is False and facts["carried_tensors"] == 28 and "every other weight fp32" in facts["scheme"]
    probe = state.data.eval[:2, :32]
    assert (session.logits(probe) - model_logits(state.model, probe)).abs().max().item() < 1e-5
    facts, session, out = _export(tmp_path / "int8", state, weights="int8", dynamic_quantization="off")
    assert facts["requantized"] is True and facts["carried_tensors"] == 28 and facts["requantized_tensors"] == 1
    assert _stored_types(out) == {"i4": 28, "u8": 1} and facts["format"] == "openvino-ir-int4+int8"  # NNCF's table
    assert "NNCF int8" in facts["scheme"] and "the other weights" in facts["scheme"]


def test_dynamic_quantization_is_recorded_and_applied(tmp_path):
    """auto leaves OpenVINO's CPU default (int8 activations in groups of 32 in compressed MatMuls); off compiles with
    DYNAMIC_QUANTIZATION_GROUP_SIZE=0."""
    state = _quantized(group_size=32)
    facts, session, _ = _export(tmp_path / "off", state, dynamic_quantization="off")
    assert facts["dynamic_quantization"] == "off" and session.dynamic_quantization == "off"
    assert int(session._compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 0
    facts, session, _ = _export(tmp_path / "auto", state)
    assert facts["dynamic_quantization"] == "auto" and "dynamic quantization" in facts["notes"]
    assert int(session._compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) != 0
    with pytest.raises(ConfigError, match="exporter.openvino.dynamic_quantization"):
        OpenVinoConfig(dynamic_quantization="int4")


def test_cli_autoround_codes_reach_openvino_as_they_are(tmp_path):
    """The pipeline as a user runs it: prune → autoround int4 (table int8, llama.cpp Q4_0's layout) → openvino with
    weights=auto; the deployment carries every code and scores the artifact's perplexity."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "slimkit", "experiment=tiny", "quantizer=autoround",
                             "quantizer.method=rtn", "quantizer.group_size=32", "quantizer.embedding=int8",
                             "exporter=openvino", "exporter.openvino.dynamic_quantization=off",
                             f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    (entry,) = report["deployments"]
    assert entry["format"] == "openvino-ir-int4+int8" and entry["requantized"] is False
    assert entry["carried_tensors"] == 29 and entry["requantized_tensors"] == 0
    assert entry["perplexity"] == pytest.approx(report["final"]["perplexity"], rel=1e-4)
