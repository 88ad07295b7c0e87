import copy

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from slimkit.core.errors import ArtifactError, ConfigError
from slimkit.evaluation import model_logits
from slimkit.testing import ExporterContract, random_token_state
from slimkit_gguf import FILE_NAME, GGUFConfig, GGUFExporter
from slimkit_gguf.runtime import TransformersGGUFSession
from slimkit_gguf.writer import tensor_type

torch.set_num_threads(1)


class TestGGUFContract(ExporterContract):
    exporter_cls = GGUFExporter
    configs = [{}, {"weights": "f16"}, {"weights": "q8_0"}, {"weights": "q4_0"}, {"weights": "q5_1", "embeddings": "f16"}]
    # the module docstring's documented tolerances (tiny model, logits ~1 in size)
    tolerances = {"auto": 1e-3, "f32": 1e-3, "f16": 1e-2, "bf16": 1e-2, "q8_0": 5e-2, "q5_1": 0.3, "q4_0": 0.3}
    bad_weights = "q3_k"


def _export(model, tokenizer, tmp_path, **config):
    out = tmp_path / "gguf"
    out.mkdir(parents=True)
    facts = GGUFExporter(GGUFConfig(**config)).export(tmp_path, model, tokenizer, out)
    return out, facts


def _read_back(out):
    return AutoModelForCausalLM.from_pretrained(str(out), gguf_file=FILE_NAME, dtype=torch.float32).eval()


def _dequantized_copy(model, weights, embeddings="auto"):
    """The model with every weight replaced by what the GGUF file holds: gguf-py quantize -> dequantize."""
    model = copy.deepcopy(model)
    tied = model.config.tie_word_embeddings
    with torch.no_grad():
        for name, param in model.named_parameters():
            gguf_name = "token_embd.weight" if name == "model.embed_tokens.weight" else \
                "output.weight" if name == "lm_head.weight" else name
            qtype = tensor_type(gguf_name, param, weights, embeddings, tied)
            data = param.detach().float().numpy()
            param.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype)).reshape(param.shape))
    return model


@pytest.mark.parametrize("weights", ["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0"])
def test_transformers_reads_back_exactly_the_quantized_weights(tmp_path, weights):
    state = random_token_state()
    out, facts = _export(state.model, state.tokenizer, tmp_path, weights=weights)
    probe = state.data.eval[:2, :48]
    expected = model_logits(_dequantized_copy(state.model, weights), probe)
    got = model_logits(_read_back(out), probe)
    assert (got - expected).abs().max().item() < 1e-4
    assert facts["architecture"] == "llama" and facts["format"] == f"gguf {weights.upper()}"
    if weights.startswith("q4"):  # tied embedding / output at Q8_0, the rest at the chosen type
        assert facts["tensor_types"] == {weights.upper(): 28, "Q8_0": 1, "F32": 9}


def test_sizes_shrink_with_the_format(tmp_path):
    state = random_token_state()
    sizes = {}
    for weights in ("f32", "f16", "q8_0", "q4_0"):
        out, _ = _export(state.model, state.tokenizer, tmp_path / weights, weights=weights)
        sizes[weights] = (out / FILE_NAME).stat().st_size
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]


def test_auto_carries_the_float_weights_through(tmp_path):
    state = random_token_state()
    out, facts = _export(state.model, state.tokenizer, tmp_path)
    assert facts["format"] == "gguf F32" and facts["requantized"] is False
    probe = state.data.eval[:2, :48]
    assert torch.equal(model_logits(_read_back(out), probe), model_logits(state.model, probe))
    bf16 = copy.deepcopy(state.model).to(torch.bfloat16)
    _, facts = _export(bf16, state.tokenizer, tmp_path / "bf16")
    assert facts["format"] == "gguf BF16"


def test_structurally_pruned_model_exports_as_the_smaller_architecture(tmp_path):
    pytest.importorskip("slimkit_torch_pruning")
    from slimkit_torch_pruning import StructuredPruner, StructuredPruningConfig

    state = random_token_state()
    StructuredPruner(StructuredPruningConfig(sparsity=0.5, heads_sparsity=0.5)).apply(state)
    assert (state.model.config.num_attention_heads, state.model.config.intermediate_size) == (2, 64)
    out, _ = _export(state.model, state.tokenizer, tmp_path, weights="f32")
    back = _read_back(out)
    assert (back.config.num_attention_heads, back.config.num_key_value_heads, back.config.intermediate_size,
            back.config.head_dim) == (2, 1, 64, 16)
    probe = state.data.eval[:2, :48]
    assert (model_logits(back, probe) - model_logits(state.model, probe)).abs().max().item() < 1e-5
    reader = gguf.GGUFReader(out / FILE_NAME)
    assert int(reader.fields["llama.attention.key_length"].parts[-1][0]) == 16  # heads x head_dim != hidden


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_other_families_read_back(tmp_path, family):
    import transformers

    state = random_token_state()
    names = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "qwen2"),
             "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "qwen3")}
    config_cls, model_cls, arch = (getattr(transformers, n) if i < 2 else n for i, n in enumerate(names[family]))
    torch.manual_seed(0)
    config = config_cls(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=128, tie_word_embeddings=True, max_position_embeddings=512)
    model = model_cls(config).eval()
    out, facts = _export(model, state.tokenizer, tmp_path, weights="f32")
    assert facts["architecture"] == arch
    probe = state.data.eval[:2, :48]
    assert (model_logits(_read_back(out), probe) - model_logits(model, probe)).abs().max().item() < 1e-5


def test_tokenizer_is_in_the_file(tmp_path):
    state = random_token_state()
    out, facts = _export(state.model, state.tokenizer, tmp_path, weights="q8_0")
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(str(out), gguf_file=FILE_NAME)
    text = "The history of the city began in 1850."
    assert back(text)["input_ids"] == state.tokenizer(text)["input_ids"]


# --- bad input: every case names the combination and what works, before any weights load ---------

@pytest.mark.parametrize("key,kw", [("exporter.gguf.weights", {"weights": "q3_k"}),
                                    ("exporter.gguf.embeddings", {"embeddings": "int4"})])
def test_bad_formats_are_config_errors(key, kw):
    with pytest.raises(ConfigError, match=key):
        GGUFConfig(**kw)


@pytest.mark.parametrize("writer", ["bnb", "int8"])
def test_quantized_artifacts_gguf_cannot_hold_are_refused_with_alternatives(writer):
    with pytest.raises(ConfigError) as err:
        GGUFExporter().check_model(random_token_state().model.config, writer)
    text = str(err.value)
    assert f"quantizer={writer}" in text and "~quantizer" in text and "exporter.gguf.weights=q8_0" in text


def test_quanto_weights_are_dequantized_exactly_and_said_so(tmp_path):
    slimkit_quanto = pytest.importorskip("slimkit_quanto")
    state = random_token_state()
    slimkit_quanto.QuantoQuantizer(slimkit_quanto.QuantoConfig(bits=8)).apply(state)
    GGUFExporter().check_model(state.model.config, "quanto")  # allowed: quanto's weights dequantize exactly
    probe = state.data.eval[:2, :48]
    out, facts = _export(state.model, state.tokenizer, tmp_path / "auto")
    assert facts["format"] == "gguf F32" and facts["requantized"] is False and facts["dequantized_modules"] == 28
    assert "dequantized exactly" in facts["notes"]
    assert (model_logits(_read_back(out), probe) - model_logits(state.model, probe)).abs().max().item() < 1e-4
    _, facts = _export(state.model, state.tokenizer, tmp_path / "q8", weights="q8_0")
    assert facts["requantized"] is True and "re-quantized" in facts["notes"]


def test_unsupported_model_type_is_refused():
    with pytest.raises(ConfigError, match="'gpt2' is not mapped to GGUF"):
        GGUFExporter().check_model(GPT2Config(), None)


def test_rope_scaling_is_refused():
    config = copy.deepcopy(random_token_state().model.config)
    config.rope_parameters = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
    with pytest.raises(ConfigError, match="rope scaling 'llama3'"):
        GGUFExporter().check_model(config, None)


def test_non_float_weights_are_refused_at_export(tmp_path):
    state = random_token_state()
    state.model.model.layers[0].mlp.down_proj.register_buffer("codes", torch.zeros(4, dtype=torch.int8))
    with pytest.raises(ArtifactError, match="float weights"):
        _export(state.model, state.tokenizer, tmp_path, weights="q8_0")


def test_open_refuses_a_folder_without_the_file(tmp_path):
    with pytest.raises(ArtifactError, match="no model.gguf"):
        GGUFExporter.open(tmp_path)


def test_transformers_session_runs(tmp_path):
    state = random_token_state()
    out, _ = _export(state.model, state.tokenizer, tmp_path, weights="f32")
    session = TransformersGGUFSession(out / FILE_NAME)
    assert session.runtime == "transformers-gguf" and "transformers" in session.runtime_version
    prompt = state.data.eval[:1, :16]
    assert session.generate(prompt, 4) == _greedy(state.model, prompt, 4)


def _greedy(model, prompt, n):
    ids, out = prompt, []
    for _ in range(n):
        token = model_logits(model, ids)[:, -1].argmax(-1, keepdim=True)
        out.append(int(token))
        ids = torch.cat([ids, token], 1)
    return out


def test_llama_cpp_runs_the_file_like_the_reference(tmp_path):
    pytest.importorskip("llama_cpp")
    from slimkit_gguf.runtime import LlamaCppSession

    state = random_token_state()
    probe = state.data.eval[:2, :48]
    for weights, tolerance in (("f32", 1e-3), ("q8_0", 2e-2), ("q4_0", 5e-2)):
        out, _ = _export(state.model, state.tokenizer, tmp_path / weights, weights=weights)
        session = LlamaCppSession(out / FILE_NAME, threads=1)
        assert session.runtime == "llama.cpp"
        # against PyTorch on the very weights the file holds: llama.cpp's kernels (which also round
        # activations to 8 bits for the quantized dot products) are the only difference
        expected = model_logits(_dequantized_copy(state.model, weights), probe)
        diff = (session.logits(probe) - expected).abs().max().item()
        assert diff < tolerance, f"{weights}: llama.cpp logits differ by {diff}"
        prompt = probe[:1, :16]
        assert session.generate(prompt, 4)[0] == int(session.logits(prompt)[0, -1].argmax())


def test_llama_cpp_session_grows_its_context_for_long_sequences(tmp_path):
    pytest.importorskip("llama_cpp")
    from slimkit_gguf.runtime import LlamaCppSession

    state = random_token_state()
    out, _ = _export(state.model, state.tokenizer, tmp_path, weights="f32")
    session = LlamaCppSession(out / FILE_NAME, threads=1, context=32)
    ids = torch.randint(0, 512, (1, 100))
    expected = model_logits(state.model, ids)
    assert (session.logits(ids) - expected).abs().max().item() < 1e-3 and session.context == 128
