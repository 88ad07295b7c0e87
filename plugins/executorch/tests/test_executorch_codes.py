"""slimkit's integer codes (the autoround quantizer's) handed to torchao as they are and lowered into the ``.pte``."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("executorch.runtime")
pytest.importorskip("torchao")
pytest.importorskip("auto_round")

from slimkit_executorch import ExecuTorchConfig, ExecuTorchExporter

from slimkit.deploy.holdings import int_weight_modules
from slimkit.evaluation import model_logits
from slimkit.testing import random_token_state

torch.set_num_threads(1)


def _quantized(layers: int | None = None, **values):
    """The tiny model (or a ``layers``-layer one) after the autoround quantizer (round-to-nearest: fast)."""
    from slimkit_autoround import AutoRoundConfig, AutoRoundQuantizer

    from slimkit.models import tiny_model

    state = random_token_state()
    if layers is not None:
        state.model = tiny_model(0, layers=layers)
    AutoRoundQuantizer(AutoRoundConfig(method="rtn", **values)).apply(state)
    return state


GPTQ = {"sym_grid": "gptq"}  # positive scales (2 * absmax / 15), codes in [-8, 7]: what XNNPACK holds


@pytest.mark.parametrize("values,config,carried,kept", [
    # the mobile recipe's layout, int4 sym g32 decoder + int8 per-row table: the table (positive scales) goes to the
    # embedding and the tied lm_head; AutoRound's full-range int4 has negative scales, which XNNPACK refuses
    ({"group_size": 32, "embedding": "int8", "embedding_group_size": -1}, {}, 2,
     {"model.layers.0.mlp.down_proj": "negative scales"}),
    # the same on the gptq grid (quantizer.sym_grid=gptq): everything is held
    ({"group_size": 32, "embedding": "int8", "embedding_group_size": -1, **GPTQ}, {}, 30, {}),
    # a grouped int8 table: the embedding holds it, XNNPACK's int8 linear (the tied lm_head) does not
    ({"group_size": 32, "embedding": "int8", **GPTQ}, {}, 29, {"lm_head": "int8 codes in groups of 32"}),
    ({"group_size": 16, "embedding": "int4", **GPTQ}, {"weights": "8da4w", "group_size": 32}, 30, {}),  # codes win
    ({"group_size": 32, "sym": False}, {}, 0, {"model.layers.0.mlp.down_proj": "asymmetric codes"}),
])
def test_codes_reach_torchao_as_they_are(values, config, carried, kept):
    """Every module XNNPACK can hold gets torchao's tensor of its own codes and float16 scales (bit-exact, not
    re-rounded); the others are named with the reason; the caller's model is not touched."""
    state = _quantized(**values)
    model = state.model
    codes = int_weight_modules(model)
    before = {name: p.clone() for name, p in model.named_parameters()}
    work = copy.deepcopy(model)
    done, left, requantized = ExecuTorchExporter(ExecuTorchConfig(**config))._quantize(work, int_weight_modules(work))
    assert len(done) == carried and not requantized
    for name, why in kept.items():
        assert why in left[name]
    table = next((name for name in codes if "embed" in name), None)
    for name in done:
        weight, spec = work.get_submodule(name).weight, codes.get(name) or codes[table]
        assert torch.equal(weight.qdata, spec.codes.to(torch.int8))
        assert torch.equal(weight.scale, spec.scale.float().reshape(weight.scale.shape))
        assert tuple(weight.block_size) == (1, spec.group_size)
        assert weight.target_dtype == (torch.int4 if spec.bits <= 4 else torch.int8)
        assert (weight.activation_quantization is None) == isinstance(work.get_submodule(name), torch.nn.Embedding)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    for name in left:  # not held: weights=auto leaves the float weights (codes × scales) as they are
        assert type(work.get_submodule(name).weight) is torch.nn.Parameter


def test_modules_without_codes_take_the_settings_and_the_report_says_which(tmp_path):
    """A grouped int8 table under lm_head=8da8w: the table's codes go to the embedding, the tied lm_head (which
    XNNPACK cannot hold in groups) is re-quantized by torchao per output channel, and the scheme names both."""
    state = _quantized(group_size=32, embedding="int8", **GPTQ)
    work = copy.deepcopy(state.model)
    exporter = ExecuTorchExporter(ExecuTorchConfig(lm_head="8da8w"))
    done, left, requantized = exporter._quantize(work, int_weight_modules(work))
    assert requantized == {"lm_head": "8da8w"} and "lm_head" in left and len(done) == 29
    scheme = exporter.scheme(done, requantized, "lm_head")
    assert scheme["weights"] == "8da4w+8da8w" and scheme["embedding"] == "int8"
    assert "28x int4 symmetric linear weights, groups of 32" in scheme["scheme"]
    assert "1x int8 embedding, groups of 32" in scheme["scheme"]
    assert "torchao 8da8w" in scheme["scheme"] and "re-quantized from the float weights" in scheme["scheme"]


def test_carried_codes_lower_and_run_in_executorch(tmp_path):
    """One lowering (one layer) of a gptq-grid artifact: the program runs the carried codes — nothing re-quantized, logits within the 8da4w
    tolerance of the autoround model's (XNNPACK quantizes activations to int8 per token), and a file far smaller
    than the fp32 weights (a tiny model: the int8 table, stored twice, is most of it)."""
    state = _quantized(layers=1, group_size=32, embedding="int8", embedding_group_size=-1, **GPTQ)
    out = tmp_path / "export"
    out.mkdir()
    facts = ExecuTorchExporter(ExecuTorchConfig(max_seq_len=64)).export(tmp_path, state.model, state.tokenizer, out)
    assert facts["requantized"] is False and facts["requantized_tensors"] == 0
    assert facts["carried_tensors"] == 9 and facts["format"] == "executorch-pte-xnnpack-8da4w+8da8w-embint8"
    assert "not re-quantized" in facts["scheme"] and "with the tied table's codes" in facts["scheme"]
    assert json.loads((out / "slimkit_export.json").read_text())["carried"] == facts["carried"]
    probe = state.data.eval[:2, :32]
    diff = (ExecuTorchExporter.open(out).logits(probe) - model_logits(state.model, probe)).abs().max().item()
    assert diff < 0.3, diff
    fp32_bytes = sum(p.numel() * 4 for p in state.model.parameters())
    assert (out / "model.pte").stat().st_size < 0.5 * fp32_bytes  # the int8 table is stored twice (embedding, head)


def test_full_range_int4_is_requantized_by_torchao_beside_the_carried_table(tmp_path):
    """The mobile recipe's own layout under weights=8da4w (one layer): the int8 per-row table is carried into the
    embedding and the tied lm_head, the decoder's negative-scale int4 codes are re-quantized by torchao on its grid,
    the report says both, and the program loads and scores within the 8da4w tolerance."""
    state = _quantized(layers=1, group_size=32, embedding="int8", embedding_group_size=-1)
    out = tmp_path / "export"
    out.mkdir()
    exporter = ExecuTorchExporter(ExecuTorchConfig(weights="8da4w", group_size=32, max_seq_len=64))
    facts = exporter.export(tmp_path, state.model, state.tokenizer, out)
    assert facts["carried"] == ["lm_head", "model.embed_tokens"] and facts["requantized_tensors"] == 7
    assert facts["requantized"] is True and "7x negative scales" in facts["notes"]
    assert "torchao 8da4w" in facts["scheme"] and "re-quantized from the float weights" in facts["scheme"]
    probe = state.data.eval[:2, :32]
    diff = (ExecuTorchExporter.open(out).logits(probe) - model_logits(state.model, probe)).abs().max().item()
    assert diff < 0.3, diff


def test_case_study_mobile_executorch_carries_every_code_on_the_tiny_model(tmp_path):
    """`experiment=case_study_mobile_executorch` on the tiny model (2 QAT steps): the gptq grid's int4 decoder and
    the int8 per-row table reach the ``.pte`` as they are (as they reach OpenVINO and GGUF), and it scores like the
    artifact."""
    pytest.importorskip("openvino")
    pytest.importorskip("gguf")
    overrides = ["experiment=case_study_mobile_executorch", "model=tiny", "data=tiny", "eval=fast", "eval.tasks=[]",
                 "distiller.max_steps=2", "distiller.eval_every=1",
                 "distiller.checkpoint_every=1", f"hydra.run.dir={tmp_path}"]
    run = subprocess.run([sys.executable, "-m", "slimkit", *overrides], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stages"][1]["config"]["sym_grid"] == "gptq"
    deployed = {d["exporter"]: d for d in report["deployments"]}
    assert list(deployed) == ["executorch", "openvino", "gguf"]
    for entry in deployed.values():
        assert entry["requantized"] is False and entry["requantized_tensors"] == 0, entry
    entry = deployed["executorch"]
    assert entry["carried_tensors"] == 4 * 7 + 2  # every decoder Linear, the embedding and the tied lm_head
    # the program's only approximation is XNNPACK's int8 dynamic activations
    assert entry["perplexity"] == pytest.approx(report["final"]["perplexity"], rel=0.02)
