import json
import sys

import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from slimkit_openvino import OpenVinoConfig, OpenVinoExporter

from slimkit import ConfigError, MissingDependencyError
from slimkit.evaluation import model_logits
from slimkit.testing import ExporterContract, random_token_state

torch.set_num_threads(1)


class TestOpenVinoContract(ExporterContract):
    exporter_cls = OpenVinoExporter
    configs = [{}, {"weights": "int8"}, {"weights": "int4", "group_size": 32, "symmetric": True}]
    # max |Δlogit| against PyTorch on the tiny model (logits ~1 in size), f32 inference: fp32 is exact up to float
    # reassociation; int8 (per channel) and int4 (groups) are bounded by their rounding
    tolerances = {"auto": 1e-4, "int8": 0.05, "int4": 0.3}
    bad_weights = "q4_0"


def _export(tmp_path, model, tokenizer, **config):
    out = tmp_path / "export"
    out.mkdir()
    facts = OpenVinoExporter(OpenVinoConfig(**config)).export(tmp_path, model, tokenizer, out)
    return facts, OpenVinoExporter.open(out, threads=1), out


def test_rope_base_kv_cache_and_per_layer_sizes_match_pytorch(tmp_path):
    """One export covers three risks: SmolLM2's RoPE base (100,000, in transformers 5's rope_parameters), a
    structurally pruned model with different sizes per layer (exported as it is in memory), and greedy decoding
    with the KV cache passed through the model's signature."""
    pytest.importorskip("torch_pruning")
    from slimkit_torch_pruning import StructuredPruner, StructuredPruningConfig

    from slimkit.models import tiny_model

    state = random_token_state()
    model = tiny_model(0)
    model.config.rope_parameters = {"rope_theta": 100000.0, "rope_type": "default"}
    state.model = type(model)(model.config).eval()  # rebuilt: the rotary embedding takes the new base
    pruner = StructuredPruner(StructuredPruningConfig(sparsity=0.5, heads_sparsity=0.5, exclude=["model.layers.0.*"]))
    pruner.apply(state)
    model = state.model
    assert model.config.slimkit_layer_dims[0] != model.config.slimkit_layer_dims[1]
    facts, session, out = _export(tmp_path, model, state.tokenizer)
    kv_heads = [heads for heads, _ in json.loads((out / "slimkit_export.json").read_text())["kv_shapes"]]
    assert kv_heads == [2, 1, 1, 1]
    probe = state.data.eval[:2, :48]
    assert (session.logits(probe) - model_logits(model, probe)).abs().max().item() < 1e-4
    prompt = probe[:1, :12]
    expected = model.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False)[0, 12:].tolist()
    assert session.generate(prompt, 10) == expected
    assert facts["requantized"] is False and facts["inference_precision"] == "f32"


def test_int4_scheme_and_inference_precision_are_recorded(tmp_path):
    state = random_token_state()
    facts, session, out = _export(tmp_path, state.model, state.tokenizer, weights="int4", group_size=32,
                                  symmetric=True, inference_precision="bf16")
    assert facts["requantized"] is True and facts["group_size"] == 32 and facts["symmetric"] is True
    assert "int4 symmetric, groups of 32" in facts["scheme"]
    assert session.inference_precision == "bf16"
    assert json.loads((out / "slimkit_export.json").read_text())["inference_precision"] == "bf16"
    probe = state.data.eval[:1, :16]
    assert (session.logits(probe) - model_logits(state.model, probe)).abs().max().item() < 0.5
    assert (out / "openvino_model.bin").stat().st_size < 0.5 * sum(
        p.numel() * 4 for p in state.model.parameters())  # compressed well below the fp32 weights


def test_bad_inputs_are_refused_before_any_export():
    from transformers import GPT2Config, LlamaConfig

    for key, value in (("inference_precision", "f16"), ("group_size", 48), ("weights", "int3")):
        with pytest.raises(ConfigError, match=f"exporter.openvino.{key}"):
            OpenVinoConfig(**{key: value})
    exporter = OpenVinoExporter(OpenVinoConfig(weights="int4", group_size=128))
    with pytest.raises(ConfigError, match="'gpt2'"):
        exporter.check_model(GPT2Config(), None)
    for writer in ("int8", "bnb"):
        with pytest.raises(ConfigError, match=f"quantizer={writer}.*exporter.openvino.weights=int8 or int4"):
            exporter.check_model(LlamaConfig(hidden_size=512, intermediate_size=1024), writer)
    with pytest.raises(ConfigError, match="exporter.openvino.group_size.*hidden_size=576"):
        exporter.check_model(LlamaConfig(hidden_size=576, intermediate_size=1536), None)


def test_missing_runtime_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match="pip install"):
        OpenVinoExporter.check_dependencies()


def test_cli_experiment_tiny_exporter_openvino_runs_as_written(tmp_path):
    """The default recipe (magnitude pruning, quanto int8 weights) on the tiny model, exported for OpenVINO:
    quanto's weights are dequantized exactly, so the f32 export scores what the artifact scores."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", "slimkit", "experiment=tiny", "exporter=openvino",
                             f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    (entry,) = report["deployments"]
    assert entry["exporter"] == "openvino" and entry["runtime"] == "openvino" and entry["format"] == "openvino-ir-fp32"
    assert entry["requantized"] is False and entry["dequantized_modules"] > 0 and entry["inference_precision"] == "f32"
    assert entry["perplexity"] == pytest.approx(report["final"]["perplexity"], rel=1e-3)
    # eval=fast times 4 decode tokens once: the decode ratio can come out NaN on a busy machine, prefill cannot
    assert entry["prefill_speedup"] > 0 and "decode_speedup" in entry
