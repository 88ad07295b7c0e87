"""Gemma-3 (``gemma3_text``) in the gguf exporter: a tiny model read back by transformers' GGUF loader and, where
llama-cpp-python is installed, run in llama.cpp."""

import gguf
import pytest
import torch
from slimkit_gguf import FILE_NAME, GGUFConfig, GGUFExporter
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from slimkit.core.errors import ConfigError
from slimkit.evaluation import model_logits
from slimkit.testing import random_token_state

torch.set_num_threads(1)


def tiny_gemma3(**overrides):
    """Six layers: five sliding-window layers (window 16, rope base 10,000) then one full-attention layer
    (rope base 1,000,000), Gemma-3's pattern; probes of 48 tokens cross the window. Heads of 256 as in every
    Gemma-3: GGUF has no key for ``query_pre_attn_scalar`` (llama.cpp uses head_dim, transformers' loader 256)."""
    torch.manual_seed(0)
    values = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=16,
                  max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    values.update(overrides)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**values)).eval()
    with torch.no_grad():  # Gemma initialises its norms to 0 (= scale 1): make the "1 + w" convention matter
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.3)
    return model


def _export(model, tokenizer, out, **config):
    out.mkdir(parents=True)
    return GGUFExporter(GGUFConfig(**config)).export(out, model, tokenizer, out)


def test_tiny_gemma3_reads_back_with_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    state = random_token_state()
    model = tiny_gemma3()
    assert model.config.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    facts = _export(model, state.tokenizer, tmp_path / "gguf", weights="f32")
    assert facts["architecture"] == "gemma3"
    reader = gguf.GGUFReader(tmp_path / "gguf" / FILE_NAME)
    field = reader.fields["gemma3.attention.sliding_window_pattern"]
    assert [bool(field.parts[i][0]) for i in field.data] == [True] * 5 + [False]
    assert float(reader.fields["gemma3.rope.freq_base_swa"].parts[-1][0]) == 10000.0
    assert float(reader.fields["gemma3.rope.freq_base"].parts[-1][0]) == 1e6
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "gguf"), gguf_file=FILE_NAME, dtype=torch.float32).eval()
    probe = state.data.eval[:2, :48]
    assert (model_logits(back, probe) - model_logits(model, probe)).abs().max().item() < 1e-4


def test_tiny_gemma3_runs_in_llama_cpp(tmp_path):
    pytest.importorskip("llama_cpp")
    from slimkit_gguf.runtime import LlamaCppSession

    state = random_token_state()
    model = tiny_gemma3()
    _export(model, state.tokenizer, tmp_path / "gguf", weights="f32")
    session = LlamaCppSession(tmp_path / "gguf" / FILE_NAME, threads=1)
    probe = state.data.eval[:2, :48]
    assert (session.logits(probe) - model_logits(model, probe)).abs().max().item() < 1e-3


def test_gemma3_int4_codes_are_carried(tmp_path):
    """Round-to-nearest int4 codes on every Linear and the tied embedding (attached as the autoround quantizer
    leaves them): every matrix Q4_0 from the codes, norms shifted to 1 + w, nothing re-quantized."""
    layout = pytest.importorskip("slimkit_autoround.layout")
    state = random_token_state()
    model = tiny_gemma3()
    with torch.no_grad():
        for name, module in model.named_modules():
            if (isinstance(module, torch.nn.Linear) and name != "lm_head") or name == "model.embed_tokens":
                spec = layout.round_to_nearest(module.weight, 4, 32)
                module.weight.copy_(spec.dequantize())
                setattr(module, layout.ATTRIBUTE, spec)
    facts = _export(model, state.tokenizer, tmp_path / "gguf")
    assert facts["requantized"] is False and facts["carried_tensors"] == 6 * 7 + 1
    stored = {t.name: t for t in gguf.GGUFReader(tmp_path / "gguf" / FILE_NAME).tensors}
    for gguf_name, weight in (("blk.5.ffn_down.weight", model.model.layers[5].mlp.down_proj.weight),
                              ("blk.0.attn_q.weight", model.model.layers[0].self_attn.q_proj.weight),
                              ("token_embd.weight", model.model.embed_tokens.weight),
                              ("blk.2.post_ffw_norm.weight", model.model.layers[2].post_feedforward_layernorm.weight + 1)):
        tensor = stored[gguf_name]
        values = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy()).reshape(weight.shape)
        assert torch.equal(values, weight.detach()), gguf_name
    assert stored["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_0


@pytest.mark.parametrize("overrides,match", [({"query_pre_attn_scalar": 32}, "query_pre_attn_scalar=32"),
                                             ({"hidden_activation": "gelu"}, "hidden_activation='gelu'")])
def test_gemma3_llama_cpp_cannot_run_is_refused_before_load(overrides, match):
    config = Gemma3TextConfig(head_dim=16, query_pre_attn_scalar=16, hidden_size=64, num_attention_heads=4)
    GGUFExporter().check_model(config, None)  # as llama.cpp runs it
    for key, value in overrides.items():
        setattr(config, key, value)
    with pytest.raises(ConfigError, match=match):
        GGUFExporter().check_model(config, None)


def spm_tokenizer():
    """A tiny Gemma-style tokenizer: BPE over "▁"-joined text with byte fallback. Its merge list puts ("r", "s")
    before ("e", "r"), so "ers" must become "e" + "rs": a reader that merged left to right would differ."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzTHE.,▁"))
    merges = [("r", "s"), ("t", "h"), ("th", "e"), ("▁", "the"), ("i", "n"), ("▁", "in"), ("a", "n"), ("an", "d"),
              ("▁", "and"), ("e", "r"), ("o", "n"), ("▁", "c"), ("▁c", "a"), ("▁ca", "t"), ("e", "s"), ("i", "t")]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)] + chars)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>", add_bos_token=True)


TEXTS = ["the cat and it is in the Zoo!", "then, the riders ran.\nAnd it's über", "  double  spaces the end"]


def test_sentencepiece_style_tokenizer_reads_back_the_same(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = spm_tokenizer()
    assert "rs" in tokenizer.convert_ids_to_tokens(tokenizer("riders").input_ids)
    facts = _export(tiny_gemma3(vocab_size=len(tokenizer.get_vocab())), tokenizer, tmp_path / "gguf", weights="f32")
    reader = gguf.GGUFReader(tmp_path / "gguf" / FILE_NAME)
    assert bytes(reader.fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama"
    assert facts["tokenizer_pre"] == "default"
    back = AutoTokenizer.from_pretrained(str(tmp_path / "gguf"), gguf_file=FILE_NAME)
    for text in TEXTS:
        assert back(text).input_ids == tokenizer(text).input_ids, text
    try:
        import llama_cpp
    except ImportError:
        return
    llm = llama_cpp.Llama(model_path=str(tmp_path / "gguf" / FILE_NAME), vocab_only=True, verbose=False)
    for text in TEXTS:
        assert list(llm.tokenize(text.encode(), add_bos=True, special=False)) == tokenizer(text).input_ids, text
