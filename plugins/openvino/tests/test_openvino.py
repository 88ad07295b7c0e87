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
    out.mkdir(parents=True)
    facts = OpenVinoExporter(OpenVinoConfig(**config)).export(tmp_path, model, tokenizer, out)
    return facts, OpenVinoExporter.open(out, threads=1), out


def test_rope_base_kv_cache_and_per_layer_sizes_match_pytorch(tmp_path):
    """One export covers three risks: SmolLM2's RoPE base (100,000, in transformers 5's rope_parameters), a
    structurally pruned model with different sizes per layer (exported as it is in memory), and greedy decoding
    with the KV cache held in the model's state (one state per layer, each with its own head count)."""
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


def _peaked_tiny_model():
    """The tiny Llama with larger random weights (logits ~2.4 in size, not ~0.1): greedy tokens vary from step
    to step, so a decode that read a stale or missing cache would pick other tokens."""
    from slimkit.models import tiny_model

    model = tiny_model(0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if "embed" in name else 0.2))
    return model


def _check_decode_steps(session, model, tolerance):
    """Prefill then 6 one-token decode steps through the state give PyTorch's logits within ``tolerance``,
    and each step's logits equal the export's own full-sequence logits at that position (the state holds
    exactly the tokens fed so far)."""
    prompt = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        expected, tokens = [out.logits], []
        for _ in range(6):
            tokens.append(out.logits[:, -1:].argmax(-1))
            out = model(input_ids=tokens[-1], cache=out.cache, use_cache=True)
            expected.append(out.logits)
    assert len({int(t) for t in tokens}) > 1, "the test model should not repeat one token"
    got = [session.step(prompt, reset=True)] + [session.step(token) for token in tokens]
    for step, (ours, theirs) in enumerate(zip(got, expected)):
        assert ours.shape == theirs.shape
        diff = (ours - theirs).abs().max().item()
        assert diff < tolerance, f"step {step}: |Δlogit| {diff} against PyTorch (tolerance {tolerance})"
    full = session.logits(torch.cat([prompt, *tokens], dim=1))
    assert (full - torch.cat(got, dim=1)).abs().max().item() < 1e-4


def test_stateful_decode_matches_pytorch_and_state_resets_between_calls(tmp_path):
    """fp32 weights, f32 inference: the IR has OpenVINO's LLM layout (no cache inputs/outputs, one state per K
    and V), decode steps give PyTorch's logits, two generations in a row give the same tokens (PyTorch's),
    and a batch after a generation starts from an empty cache."""
    import openvino
    from slimkit_openvino import INPUTS

    model = _peaked_tiny_model()
    facts, session, out = _export(tmp_path, model, random_token_state().tokenizer)
    ir = openvino.Core().read_model(str(out / "openvino_model.xml"))
    assert sorted(port.get_any_name() for port in ir.inputs) == sorted(INPUTS)
    assert [port.get_any_name() for port in ir.outputs] == ["logits"]
    reads = [op for op in ir.get_ops() if op.get_type_name() == "ReadValue"]
    assert len(reads) == 2 * model.config.num_hidden_layers and len(ir.get_sinks()) == len(reads)
    assert facts["stateful"] is True and facts["kv_cache_precision"] == "f32"
    _check_decode_steps(session, model, 1e-4)
    prompt = torch.randint(0, model.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(2))
    expected = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, 10:].tolist()
    assert session.generate(prompt, 8) == expected and session.generate(prompt, 8) == expected
    batch = torch.randint(0, model.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(3))
    assert (session.logits(batch) - model_logits(model, batch)).abs().max().item() < 1e-4
    assert session.generate(prompt, 8) == expected


def test_int8_weights_decode_through_the_state(tmp_path):
    """NNCF int8 (asymmetric, per channel) on the stateful IR: decode steps within int8's rounding of PyTorch
    and equal to the export's own full-sequence logits. On these large random weights (logits ~2.4) the same
    rounding simulated in PyTorch moves the logits by up to 0.79, hence 1.0. (int4 moves them by ~5 here;
    the contract suite checks it on the plain tiny model.)"""
    model = _peaked_tiny_model()
    facts, session, _ = _export(tmp_path, model, random_token_state().tokenizer, weights="int8")
    assert facts["weights"] == "int8" and facts["stateful"] is True
    _check_decode_steps(session, model, 1.0)


def test_an_export_without_state_is_refused(tmp_path):
    """An IR written before the stateful layout (KV cache as inputs) is refused with the remedy."""
    import openvino
    from openvino import opset13

    from slimkit import ArtifactError

    ids = opset13.parameter([1, 4], openvino.Type.i64, name="input_ids")
    ids.output(0).get_tensor().set_names({"input_ids"})
    openvino.save_model(openvino.Model([opset13.convert(ids, "f32")], [ids]), tmp_path / "openvino_model.xml")
    (tmp_path / "slimkit_export.json").write_text(json.dumps({"inference_precision": "f32"}))
    with pytest.raises(ArtifactError, match="export it again"):
        OpenVinoExporter.open(tmp_path, threads=1)


def test_int4_scheme_and_inference_precision_are_recorded(tmp_path):
    state = random_token_state()
    facts, session, out = _export(tmp_path, state.model, state.tokenizer, weights="int4", group_size=32,
                                  symmetric=True, inference_precision="bf16")
    assert facts["requantized"] is True and facts["group_size"] == 32 and facts["symmetric"] is True
    assert "int4 symmetric, groups of 32" in facts["scheme"]
    assert session.inference_precision == "bf16" and session.kv_cache_precision == "bf16"
    assert json.loads((out / "slimkit_export.json").read_text())["inference_precision"] == "bf16"
    probe = state.data.eval[:1, :16]
    assert (session.logits(probe) - model_logits(state.model, probe)).abs().max().item() < 0.5
    assert (out / "openvino_model.bin").stat().st_size < 0.5 * sum(
        p.numel() * 4 for p in state.model.parameters())  # compressed well below the fp32 weights


def test_int4_ratio_keeps_the_rest_of_the_decoder_in_int8(tmp_path):
    state = random_token_state()
    sizes = {}
    for label, values in (("int8", dict(weights="int8")), ("mixed", dict(weights="int4", int4_ratio=0.5)),
                          ("int4", dict(weights="int4"))):
        facts, session, out = _export(tmp_path / label, state.model, state.tokenizer, group_size=32, symmetric=True,
                                      **values)
        sizes[label] = (out / "openvino_model.bin").stat().st_size
        probe = state.data.eval[:1, :16]
        assert (session.logits(probe) - model_logits(state.model, probe)).abs().max().item() < 0.5
    assert facts["int4_ratio"] == 1.0
    assert sizes["int4"] < sizes["mixed"] < sizes["int8"], sizes


def test_bad_inputs_are_refused_before_any_export():
    from transformers import GPT2Config, LlamaConfig

    for key, value in (("inference_precision", "f16"), ("group_size", 48), ("weights", "int3"),
                       ("kv_cache_precision", "i4")):
        with pytest.raises(ConfigError, match=f"exporter.openvino.{key}"):
            OpenVinoConfig(**{key: value})
    for values in ({"weights": "int4", "int4_ratio": 0.0}, {"weights": "int4", "int4_ratio": 1.5},
                   {"weights": "int8", "int4_ratio": 0.5}):
        with pytest.raises(ConfigError, match="exporter.openvino.int4_ratio"):
            OpenVinoConfig(**values)
    exporter = OpenVinoExporter(OpenVinoConfig(weights="int4", group_size=128))
    with pytest.raises(ConfigError, match="llama, gemma3_text.*'gpt2'"):
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


def test_openvino_genai_llm_pipeline_serves_the_export(tmp_path):
    """openvino-genai's LLMPipeline (stateful SDPA backend) reads the folder as it is written and decodes the
    same greedy tokens as the session (and PyTorch)."""
    genai = pytest.importorskip("openvino_genai")
    pytest.importorskip("openvino_tokenizers")
    import openvino

    model = _peaked_tiny_model()
    facts, session, out = _export(tmp_path, model, random_token_state().tokenizer)
    assert facts["openvino_genai_ready"] is True and (out / "openvino_detokenizer.xml").is_file()
    pipe = genai.LLMPipeline(str(out), "CPU", ATTENTION_BACKEND="SDPA", INFERENCE_NUM_THREADS=1,
                             INFERENCE_PRECISION_HINT="f32", KV_CACHE_PRECISION="f32")
    config = genai.GenerationConfig()
    config.max_new_tokens, config.do_sample, config.ignore_eos = 8, False, True
    prompt = torch.randint(1, model.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(2))
    inputs = genai.TokenizedInputs(openvino.Tensor(prompt.numpy()), openvino.Tensor(torch.ones_like(prompt).numpy()))
    tokens = list(pipe.generate(inputs, config).tokens[0])
    assert tokens == session.generate(prompt, 8)
    assert tokens == model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, 10:].tolist()


def test_gemma3_sliding_window_prefill_and_decode_match_pytorch(tmp_path):
    """Gemma-3 (gemma3_text: sliding-window and full attention layers, scaled embeddings, q/k norms) on a tiny
    config whose window (16) the prompt and the decode both cross: prefill logits and greedy tokens match
    PyTorch, so the sliding mask holds in the stateful IR (each layer keeps its whole past, masked)."""
    from transformers import Gemma3ForCausalLM

    from slimkit.testing.compat import _gemma3

    config = _gemma3()
    assert config.sliding_window == 16 and "sliding_attention" in config.layer_types
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.02 if "embed" in name else 0.3))
    OpenVinoExporter(OpenVinoConfig()).check_model(config, None)
    _, session, _ = _export(tmp_path, model, random_token_state().tokenizer)
    long = torch.randint(1, config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    assert (session.logits(long) - model_logits(model, long)).abs().max().item() < 1e-4
    prompt = long[:1, :10]
    expected = model.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False)[0, 10:].tolist()
    assert len(set(expected)) > 3, "the test model should not repeat one token"
    assert session.generate(prompt, 20) == expected
