"""The executorch exporter on a one-layer tiny Llama: lowering cost grows with the layer count (~20 s per
export for one layer on a quiet core), so the exports are few: two in the contract (fp32, 8da4w + int8
embedding), checked further in place, and one through the CLI on the 4-layer tiny model."""

import json
import subprocess
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
    # fp32 and the quantized path with every quantized op kind (int4 linear groups through XNNPACK, the int8
    # embedding through the quantized embedding kernel); 8da8w is checked by the config round trip only (each
    # export costs ~20 s of lowering)
    configs = [{"max_seq_len": 64}, {"weights": "8da4w", "group_size": 32, "embedding": "int8", "max_seq_len": 64}]
    # max |Δlogit| against PyTorch fp32 on the tiny model (logits ~1 in size): fp32 is exact up to float
    # reassociation; 8da4w (int4 groups of 32, int8 dynamic activations) is bounded by its rounding
    tolerances = {"auto": 1e-4, "8da8w": 0.05, "8da4w": 0.3}
    bad_weights = "int4"
    tiny_model_kwargs = ONE_LAYER

    def _state(self):
        self.state = super()._state()
        return self.state

    def test_export_reopens_with_logits_within_tolerance(self, tmp_path):
        """The contract, then more checks on the same two exports (no extra lowering): decode through the program's
        KV cache gives PyTorch's greedy tokens; a later, shorter sequence scores exactly as in a fresh session (the
        cache restarts at position 0); too long a sequence is a DataError; the caller's model is left as it was
        (float parameters, its padding index and generation config); the quantized program is smaller."""
        super().test_export_reopens_with_logits_within_tolerance(tmp_path)
        state, model = self.state, self.state.model
        fp32_dir, quantized_dir = tmp_path / "export-0", tmp_path / "export-1"
        assert all(type(p) is torch.nn.Parameter for p in model.parameters())
        assert model.get_input_embeddings().padding_idx == model.config.pad_token_id
        assert model.generation_config.cache_implementation != "static"

        session = ExecuTorchExporter.open(fp32_dir, threads=1)
        prompt = state.data.eval[:1, :12]
        expected = model.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False)[0, 12:].tolist()
        assert session.generate(prompt, 10) == expected
        probe = state.data.eval[1:2, :8]
        after_long = session.logits(probe)
        assert torch.equal(after_long, ExecuTorchExporter.open(fp32_dir, threads=1).logits(probe))
        assert (after_long - model_logits(model, probe)).abs().max().item() < 1e-4
        with pytest.raises(DataError, match="max_seq_len>=65"):
            session.logits(torch.zeros(1, 65, dtype=torch.long))

        settings = json.loads((quantized_dir / "slimkit_export.json").read_text())
        assert settings["weights"] == "8da4w" and settings["embedding"] == "int8" and settings["max_seq_len"] == 64
        assert "int4 symmetric weights in groups of 32" in settings["scheme"]
        fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
        assert (quantized_dir / "model.pte").stat().st_size < 0.5 * fp32_bytes < (fp32_dir / "model.pte").stat().st_size
        # a serving process imports nothing of the export step: the session alone must register the kernels the
        # program needs (the quantized embedding's live outside XNNPACK)
        code = ("import sys, torch; from pathlib import Path; from slimkit_executorch import ExecuTorchExporter; "
                "s = ExecuTorchExporter.open(Path(sys.argv[1])); "
                "print(s.logits(torch.arange(8).unsqueeze(0)).flatten()[:64].tolist())")
        done = subprocess.run([sys.executable, "-c", code, str(quantized_dir)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        fresh = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
        here = ExecuTorchExporter.open(quantized_dir).logits(torch.arange(8).unsqueeze(0)).flatten()[:64]
        assert torch.allclose(fresh, here, atol=1e-5)


def test_bad_inputs_are_refused_before_any_export():
    from transformers import GPT2Config, LlamaConfig

    for key, value in (("embedding", "int2"), ("group_size", 31), ("max_seq_len", 4), ("weights", "q4_0"),
                       ("lm_head", "int4")):
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


def test_gemma3_exports_with_its_sliding_window_and_scaled_embedding(tmp_path):
    """Gemma-3 (alternating sliding-window and full attention, RoPE per attention type, an embedding scaled by
    sqrt(hidden)) on a 2-layer tiny model whose window (16) is shorter than the scored sequence (40): the fp32
    program matches PyTorch's logits and greedy tokens; 8da4w + int8 embedding stays within the 8da4w tolerance."""
    from slimkit.testing.compat import tiny_family_model

    model = tiny_family_model("Gemma-3")
    assert model.config.model_type == "gemma3_text" and model.config.sliding_window == 16
    tokenizer = random_token_state().tokenizer
    ids = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    expected = model_logits(model, ids)
    for i, (settings, tolerance) in enumerate((({"max_seq_len": 64}, 1e-4),
                                               ({"weights": "8da4w", "group_size": 32, "embedding": "int8",
                                                 "max_seq_len": 64}, 0.3))):
        out = tmp_path / f"export-{i}"
        out.mkdir()
        ExecuTorchExporter(ExecuTorchConfig(**settings)).export(tmp_path, model, tokenizer, out)
        session = ExecuTorchExporter.open(out, threads=1)
        assert (session.logits(ids) - expected).abs().max().item() < tolerance, settings
        if i == 0:
            greedy = model.generate(ids[:, :20], max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, 20:]
            assert session.generate(ids[:, :20], 8) == greedy.tolist()


def test_quantization_schemes_reach_the_layers_they_name():
    """What ``weights``/``group_size``/``lm_head``/``embedding`` select, checked on torchao's tensors (no lowering)."""
    from slimkit.models import tiny_model

    model = tiny_model(0, layers=1)
    ExecuTorchExporter(ExecuTorchConfig(weights="8da4w", group_size=16, lm_head="8da8w"))._quantize(model)
    down, head = model.model.layers[0].mlp.down_proj.weight, model.lm_head.weight
    assert (down.target_dtype, tuple(down.block_size)) == (torch.int4, (1, 16))
    assert (head.target_dtype, tuple(head.block_size)) == (torch.int8, (1, 64))  # per output channel
    assert type(model.model.embed_tokens.weight) is torch.nn.Parameter  # embedding="float"
    model = tiny_model(0, layers=1)
    ExecuTorchExporter(ExecuTorchConfig(weights="8da4w", lm_head="fp32", embedding="int4"))._quantize(model)
    assert type(model.lm_head.weight) is torch.nn.Parameter
    assert model.model.embed_tokens.weight.target_dtype == torch.int4


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
