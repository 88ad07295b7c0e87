"""SmoothQuant through the family table: function-preserving and error-reducing on every described family
(separate and fused q/k/v, fused gate/up, Conv1D, LayerNorm with bias, Gemma's 1+w norm, ReLU vs GELU
MLPs), and a refusal naming the model type for a family the table lacks."""

import copy

import pytest
import torch

from slimkit.core.errors import ConfigError
from slimkit.testing.compat import random_windows, tiny_family_model
from slimkit.toolkit.modules import linear_types
from slimkit_int8 import Int8Config, Int8Quantizer
from slimkit_int8._smooth import int8_errors, smooth

torch.set_num_threads(1)

#: smoothing groups per decoder block: norm->qkv, v->o, norm->mlp-in, up->down (gated or ReLU MLPs only)
GROUPS_PER_BLOCK = {"Llama": 4, "Qwen2": 4, "Qwen3": 4, "Mistral": 4, "Gemma-3": 4, "Phi-3": 4, "OPT": 4, "GPT-2": 3, "GPT-NeoX": 3}


def _with_outliers(family, seed=0):
    """A tiny model whose hidden channels 0-2 carry large activations and whose norms are not identity."""
    model = tiny_family_model(family, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.get_input_embeddings().weight[:, :3] *= 20
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("family", list(GROUPS_PER_BLOCK))
def test_smoothing_preserves_the_function_and_reduces_int8_error(family):
    model = _with_outliers(family)
    ids = random_windows().train
    names = [n for n, m in model.named_modules() if isinstance(m, linear_types()) and n != "lm_head"]
    before = model(input_ids=ids).logits
    raw = int8_errors(model, names, ids)
    params = {n: p.clone() for n, p in model.named_parameters()}
    metrics = smooth(model, ids, alpha=0.5)
    assert metrics["smoothed_groups"] == GROUPS_PER_BLOCK[family] * model.config.num_hidden_layers
    assert sum(not torch.equal(p, params[n]) for n, p in model.named_parameters()) >= metrics["smoothed_groups"]
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-4, atol=1e-4)
    assert sum(int8_errors(model, names, ids).values()) < 0.9 * sum(raw.values())


def test_opt_with_norms_after_the_sublayers_skips_the_norm_folds():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                     word_embed_proj_dim=64, vocab_size=512, do_layer_norm_before=False)).eval()
    ids = random_windows().train
    before = model(input_ids=ids).logits
    assert smooth(model, ids, alpha=0.5)["smoothed_groups"] == 2 * 2   # v->o and fc1->fc2 only
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-4, atol=1e-4)


def test_a_family_without_a_layout_is_refused_from_its_config_and_quantizes_without_smoothing():
    model = tiny_family_model("BLOOM")
    with pytest.raises(ConfigError) as info:
        Int8Quantizer(Int8Config()).check_model(model.config)
    message = str(info.value)
    assert info.value.key == "quantizer.smooth" and "'bloom'" in message and "int8" in message
    assert "false" in message and "phi3" in message and "gpt2" in message
    Int8Quantizer(Int8Config(smooth=False)).check_model(model.config)   # no layout needed without smoothing
    from slimkit.core.state import PipelineState

    state = PipelineState(model, None, random_windows(), copy.deepcopy(model))
    metrics = Int8Quantizer(Int8Config(smooth=False)).apply(state)
    assert metrics["quantized_modules"] == 2 * 4 + 1   # query_key_value, dense, h_to_4h, 4h_to_h per block + lm_head
