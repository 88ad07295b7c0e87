"""Structured pruning through the family table: on every described layout (separate and fused q/k/v in
both row orders, fused gate/up, GPT-2's Conv1D, OPT's fc1/fc2) removing structures computes exactly what
the original model computes with those structures' output-projection columns zeroed."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from slimkit.core.errors import ConfigError
from slimkit.core.state import PipelineState
from slimkit.testing.compat import random_windows, tiny_family_model
from slimkit.toolkit.families import FAMILIES, decoder_blocks
from slimkit.toolkit.modules import weight_matrix
from slimkit_torch_pruning import StructuredPruner, StructuredPruningConfig

torch.set_num_threads(1)

HEAD_DIM = 16
CASES = [(f, {"sparsity": 0.3}) for f in ("Llama", "Gemma-3", "Phi-3", "GPT-2", "OPT", "GPT-NeoX")] + [
    ("Phi-3", {"sparsity": 0.25, "heads_sparsity": 0.5}),
    ("Phi-3", {"sparsity": 0.0, "heads_sparsity": 0.5, "heads_structure": "query_heads"}),
    ("Qwen2", {"sparsity": 0.5, "heads_sparsity": 0.5}),
    ("Gemma-3", {"sparsity": 0.25, "heads_sparsity": 0.5, "heads_structure": "query_heads"}),
]


def _blocks(model):
    return decoder_blocks(model, FAMILIES[model.config.model_type], "test", "test")


def _kept_columns(pruned, original):
    """Indices of the original's columns that survive in ``pruned`` (both [out, in]), matched exactly."""
    return [next(j for j in range(original.shape[1]) if torch.equal(original[:, j], pruned[:, i]))
            for i in range(pruned.shape[1])]


@pytest.mark.parametrize("family, settings", CASES, ids=[f"{f}-{'-'.join(f'{k}={v}' for k, v in s.items())}"
                                                         for f, s in CASES])
def test_pruning_equals_masking_the_removed_structures(family, settings):
    model = tiny_family_model(family)
    original = copy.deepcopy(model)
    state = PipelineState(model, None, random_windows(), copy.deepcopy(model))
    StructuredPruner(StructuredPruningConfig(importance="random", **settings)).apply(state)
    masked = copy.deepcopy(original)
    with torch.no_grad():
        for after, before, target in zip(_blocks(model), _blocks(original), _blocks(masked)):
            for role in ("down", "o"):
                kept = _kept_columns(weight_matrix(getattr(after, role)), weight_matrix(getattr(before, role)))
                removed = sorted(set(range(weight_matrix(getattr(before, role)).shape[1])) - set(kept))
                weight_matrix(getattr(target, role))[:, removed] = 0
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in original.parameters())
    ids = state.data.eval
    torch.testing.assert_close(model(input_ids=ids).logits, masked(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family, mlp, key", [("GPT-2", ["*.mlp.*"], "n_inner"), ("OPT", ["*.fc1", "*.fc2"], "ffn_dim"),
                                              ("GPT-NeoX", ["*.mlp.*"], "intermediate_size"),
                                              ("Phi-3", ["*.mlp.*"], "intermediate_size")])
def test_each_family_config_key_is_patched_and_plain_from_pretrained_reloads(family, mlp, key, tmp_path):
    model = tiny_family_model(family)
    state = PipelineState(model, None, random_windows(), copy.deepcopy(model))
    metrics = StructuredPruner(StructuredPruningConfig(sparsity=0.5, include=mlp)).apply(state)
    assert metrics["achieved_sparsity"] == 0.5 and metrics["mlp_channel_fraction"] == 0.5
    assert getattr(model.config, key) == 64   # of 128 channels
    model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = state.data.eval
    assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("family", ["GPT-NeoX", "GPT-2", "Phi-3"])
def test_non_uniform_layers_reload_through_the_plugin(family, tmp_path):
    """Excluding a layer leaves per-layer sizes the config cannot describe; GPT-NeoX also renames lm_head to
    embed_out in save_pretrained, so the plugin writes the model's own parameter names."""
    model = tiny_family_model(family)
    state = PipelineState(model, None, random_windows(), copy.deepcopy(model))
    layers = FAMILIES[model.config.model_type].layers
    metrics = StructuredPruner(StructuredPruningConfig(sparsity=0.3, exclude=["lm_head", f"{layers}.0.*"])).apply(state)
    assert metrics["uniform"] is False
    state.artifact_writer.save(model, tmp_path)
    reloaded = StructuredPruner.load(tmp_path, {})
    ids = state.data.eval
    assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("family", ["GPT-2", "OPT", "GPT-NeoX"])
def test_heads_are_refused_from_the_config_where_it_cannot_describe_fewer(family):
    config = tiny_family_model(family).config
    StructuredPruner(StructuredPruningConfig(sparsity=0.3)).check_model(config)
    with pytest.raises(ConfigError) as info:
        StructuredPruner(StructuredPruningConfig(sparsity=0.3, heads_sparsity=0.5)).check_model(config)
    assert info.value.key == "pruner.heads_sparsity" and f"'{config.model_type}'" in str(info.value)
    assert "torch_pruning" in str(info.value) and "phi3" in str(info.value)


def test_phi3_heads_must_stay_uniform_across_layers():
    """Phi-3 splits qkv_proj by the config's head count: excluding a layer from head pruning would break it,
    so it is refused before anything is cut."""
    model = tiny_family_model("Phi-3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = PipelineState(model, None, random_windows(), copy.deepcopy(model))
    with pytest.raises(ConfigError, match="shared config") as info:
        StructuredPruner(StructuredPruningConfig(sparsity=0.3, heads_sparsity=0.5,
                                                 exclude=["lm_head", "model.layers.0.*"])).apply(state)
    assert info.value.key == "pruner.exclude"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    StructuredPruner(StructuredPruningConfig(sparsity=0.3, exclude=["lm_head", "model.layers.0.*"])).apply(state)
    assert model(input_ids=state.data.eval).logits.shape[-1] == 512   # MLP-only non-uniform pruning runs
