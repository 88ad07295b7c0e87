"""The executorch exporter on a one-layer tiny Llama: lowering cost grows with the layer count (~20 s per
export for one layer here), so the contract runs there and the CLI test on the 4-layer tiny model."""

import json
import sys

import pytest
import torch

pytest.importorskip("executorch.runtime")
pytest.importorskip("torchao")

from slimkit_executorch import ExecuTorchConfig, ExecuTorchExporter

from slimkit import ConfigError, DataError, MissingDependencyError
from slimkit.evaluation import model_logits
from slimkit.testing import ExporterContract, random_token_state

torch.set_num_threads(1)

ONE_LAYER = {"layers": 1}


class TestExecuTorchContract(ExporterContract):
    exporter_cls = ExecuTorchExporter
    # fp32 and the quantized path with every quantized op (int4 linear groups through XNNPACK, int8 embedding
    # through the quantized embedding kernel); 8da8w is covered by the config round trip only (one export each)
    configs = [{"max_seq_len": 64}, {"weights": "8da4w", "group_size": 32, "embedding": "int8", "max_seq_len": 64}]
    # max |Δlogit| against PyTorch fp32 on the tiny model (logits ~1 in size): fp32 is exact up to float
    # reassociation; 8da4w (int4 groups of 32, int8 dynamic activations) is bounded by its rounding
    tolerances = {"auto": 1e-4, "8da8w": 0.05, "8da4w": 0.3}
    bad_weights = "int4"
    tiny_model_kwargs = ONE_LAYER


def _export(tmp_path, model, tokenizer, **config):
    out = tmp_path / "export"
    out.mkdir()
    facts = ExecuTorchExporter(ExecuTorchConfig(**config)).export(tmp_path, model, tokenizer, out)
    return facts, ExecuTorchExporter.open(out, threads=1), out


def test_kv_cache_decode_matches_pytorch_and_sequences_do_not_leak(tmp_path):
    """Greedy decoding one token per call through the program's own KV cache gives PyTorch's tokens; a later,
    shorter sequence scores exactly as in a fresh session (the cache restarts at position 0); the export
    leaves the caller's model as it was."""
    from slimkit.models import tiny_model

    state = random_token_state()
    model = tiny_model(0, **ONE_LAYER)
    padding_idx = model.get_input_embeddings().padding_idx
    facts, session, out = _export(tmp_path, model, state.tokenizer, max_seq_len=64)
    assert facts["requantized"] is False and facts["format"] == "executorch-pte-xnnpack-fp32"
    assert model.get_input_embeddings().padding_idx == padding_idx
    assert model.generation_config.cache_implementation != "static"
    prompt = state.data.eval[:1, :12]
    expected = model.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False)[0, 12:].tolist()
    assert session.generate(prompt, 10) == expected
    probe = state.data.eval[1:2, :8]
    after_long = session.logits(probe)
    fresh = ExecuTorchExporter.open(out, threads=1).logits(probe)
    assert torch.equal(after_long, fresh)
    assert (after_long - model_logits(model, probe)).abs().max().item() < 1e-4
    with pytest.raises(DataError, match="max_seq_len>=65"):
        session.logits(torch.zeros(1, 65, dtype=torch.long))


def test_quantized_export_is_smaller_and_keeps_the_model_float(tmp_path):
    from slimkit.models import tiny_model

    state = random_token_state()
    model = tiny_model(0, **ONE_LAYER)
    facts, session, out = _export(tmp_path, model, state.tokenizer, weights="8da8w", embedding="int4", max_seq_len=32)
    assert facts["requantized"] is True and facts["embedding"] == "int4"
    assert "int8 symmetric weights per output channel" in facts["scheme"]
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())  # quantized a copy, not the caller's
    probe = state.data.eval[:1, :16]
    assert (session.logits(probe) - model_logits(model, probe)).abs().max().item() < 0.3
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert (out / "model.pte").stat().st_size < 0.5 * fp32_bytes
    assert json.loads((out / "slimkit_export.json").read_text())["max_seq_len"] == 32


def test_bad_inputs_are_refused_before_any_export():
    from transformers import GPT2Config, LlamaConfig

    for key, value in (("embedding", "int2"), ("group_size", 31), ("max_seq_len", 4), ("weights", "q4_0")):
        with pytest.raises(ConfigError, match=f"exporter.executorch.{key}"):
            ExecuTorchConfig(**{key: value})
    exporter = ExecuTorchExporter(ExecuTorchConfig(weights="8da4w", group_size=128))
    with pytest.raises(ConfigError, match="'gpt2'.*exporter=onnx"):
        exporter.check_model(GPT2Config(), None)
    for writer in ("int8", "bnb"):
        with pytest.raises(ConfigError, match=f"quantizer={writer}.*exporter.executorch.weights=8da8w or 8da4w"):
            exporter.check_model(LlamaConfig(hidden_size=512, intermediate_size=1024), writer)
    with pytest.raises(ConfigError, match="exporter.executorch.group_size.*hidden_size=576"):
        exporter.check_model(LlamaConfig(hidden_size=576, intermediate_size=1536), None)


def test_per_layer_head_pruning_is_refused_with_alternatives(tmp_path):
    from slimkit import ArtifactError
    from slimkit.models import tiny_model

    state = random_token_state()
    model = tiny_model(0, layers=2)
    layer = model.model.layers[1].self_attn
    layer.k_proj = torch.nn.Linear(64, 16, bias=False)  # one kv head of 16 instead of two
    with pytest.raises(ArtifactError, match="per-layer attention-head pruning.*exporter=openvino"):
        ExecuTorchExporter().export(tmp_path, model, state.tokenizer, tmp_path)


def test_missing_runtime_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)
    with pytest.raises(MissingDependencyError, match="pip install slimkit-executorch"):
        ExecuTorchExporter.check_dependencies()


def test_cli_experiment_tiny_exporter_executorch_runs_as_written(tmp_path):
    """The default recipe (magnitude pruning, quanto int8 weights) on the tiny model, exported for ExecuTorch:
    quanto's weights are dequantized exactly, so the fp32 program scores what the artifact scores."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", "slimkit", "experiment=tiny", "exporter=executorch",
                             f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    (entry,) = report["deployments"]
    assert entry["exporter"] == "executorch" and entry["runtime"] == "executorch"
    assert entry["format"] == "executorch-pte-xnnpack-fp32" and entry["runtime_version"].startswith("executorch 1.")
    assert entry["requantized"] is False and entry["dequantized_modules"] > 0
    assert entry["perplexity"] == pytest.approx(report["final"]["perplexity"], rel=1e-3)
    assert entry["prefill_speedup"] > 0 and "decode_speedup" in entry
    assert (tmp_path / "deploy" / "executorch" / "model.pte").is_file()
