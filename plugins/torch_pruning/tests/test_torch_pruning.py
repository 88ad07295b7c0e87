import copy
import functools

import pytest
import torch
from transformers import AutoModelForCausalLM, BloomConfig, BloomForCausalLM

from slimkit.core.errors import ConfigError
from slimkit.evaluation import model_logits
from slimkit.models import count_parameters
from slimkit.testing import StageContract, tiny_state
from slimkit_torch_pruning import StructuredPruner, StructuredPruningConfig

torch.set_num_threads(1)

# tiny model: hidden 64, 4 layers, 4 query heads, 2 KV heads, head_dim 16, intermediate 128
HIDDEN, LAYERS, HEAD_DIM = 64, 4, 16


@functools.lru_cache(maxsize=1)
def _cached_state():
    return tiny_state()  # tokenizes the whole text sample: build it once per session


def fresh_state():
    """A private copy of the tiny state (model, reference and data)."""
    return copy.deepcopy(_cached_state())


class TestStructuredContract(StageContract):
    stage_cls = StructuredPruner
    configs = [
        {"sparsity": 0.5},
        {"sparsity": 0.25, "heads_sparsity": 0.5},                                   # 1 of 2 KV groups
        {"sparsity": 0.25, "heads_sparsity": 0.5, "importance": "activation"},
        {"sparsity": 0.0, "heads_sparsity": 0.5, "heads_structure": "query_heads", "importance": "random"},
        {"sparsity": 0.5, "importance": "taylor", "round_to": 16},
        {"sparsity": 0.5, "exclude": ["lm_head", "model.layers.0.*"]},              # non-uniform: plugin's loader
    ]

    def _state(self):
        return fresh_state()


def _prune(state, **kw):
    return StructuredPruner(StructuredPruningConfig(**kw)).apply(state)


def _state_dict_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_parameter_count_and_config_patched():
    state = fresh_state()
    before = count_parameters(state.model)
    metrics = _prune(state, sparsity=0.5, heads_sparsity=0.5)
    cfg = state.model.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (64, 2, 1, HEAD_DIM)
    assert cfg.hidden_size == HIDDEN
    # per layer: 64 MLP channels x (gate row + up row + down column); 2 query heads (q rows + o columns), 1 KV head (k + v rows)
    removed = LAYERS * (64 * 3 * HIDDEN + 2 * HEAD_DIM * 2 * HIDDEN + 1 * HEAD_DIM * 2 * HIDDEN)
    assert count_parameters(state.model) == before - removed
    assert metrics["parameters_before"] == before and metrics["parameters_after"] == before - removed
    assert metrics["per_layer"]["model.layers.3"] == {"intermediate": 64, "heads": 2, "kv_heads": 1}
    assert all(len(heads) == 2 for heads in metrics["heads_kept"].values())
    assert metrics["uniform"] is True
    assert state.zero_masks is False  # weights were removed, not zeroed: later training masks nothing


def test_plain_from_pretrained_gives_identical_logits(tmp_path):
    state = fresh_state()
    _prune(state, sparsity=0.3, heads_sparsity=0.5, importance="taylor")
    probe = state.data.eval[:2, :48]
    expected = model_logits(state.model, probe)
    state.model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    # 0.3 of the selected weights (per layer 24,576 MLP + 12,288 attention) with half the heads gone (6,144):
    # 0.3 * 36,864 - 6,144 = 4,915 MLP weights = 0.2 of the channels -> round(128 * 0.8) = 102 kept
    assert reloaded.config.intermediate_size == state.model.config.intermediate_size == 102
    assert torch.equal(model_logits(reloaded, probe), expected)


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Indices of ``original``'s rows that survive in ``pruned`` (in order)."""
    return [int((original == row).all(1).nonzero()[0]) for row in pruned]


@pytest.mark.parametrize("structure", ["kv_groups", "query_heads"])
def test_pruning_equals_masking_the_removed_structures(structure):
    """Removing heads/channels must equal zeroing their output weights in the original: checks that
    query heads stay with their own KV head and that no index is mixed up."""
    state = fresh_state()
    masked = copy.deepcopy(state.model)
    _prune(state, sparsity=0.5, heads_sparsity=0.5, heads_structure=structure, importance="random")
    with torch.no_grad():
        for layer, ref in zip(state.model.model.layers, masked.model.layers):
            keep_mlp = _kept_rows(ref.mlp.gate_proj.weight, layer.mlp.gate_proj.weight)
            drop = torch.ones(ref.mlp.down_proj.in_features, dtype=torch.bool)
            drop[keep_mlp] = False
            ref.mlp.down_proj.weight[:, drop] = 0
            q_rows = _kept_rows(ref.self_attn.q_proj.weight, layer.self_attn.q_proj.weight)
            drop = torch.ones(ref.self_attn.o_proj.in_features, dtype=torch.bool)
            drop[q_rows] = False
            ref.self_attn.o_proj.weight[:, drop] = 0
            kv_rows = _kept_rows(ref.self_attn.k_proj.weight, layer.self_attn.k_proj.weight)
            kept_kv = sorted({r // HEAD_DIM for r in kv_rows})
            kept_q_groups = sorted({r // HEAD_DIM // 2 for r in q_rows})        # 2 query heads per KV head
            assert kept_q_groups == kept_kv                                      # query heads kept with their KV head
    probe = state.data.eval[:2, :48]
    torch.testing.assert_close(model_logits(state.model, probe), model_logits(masked, probe), atol=1e-5, rtol=1e-5)


def test_fractions_are_of_the_original_and_reapplying_is_a_no_op():
    state = fresh_state()
    _prune(state, sparsity=0.25, include=["*.mlp.*"])   # only MLP weights selected: 25% of the channels
    assert state.model.config.intermediate_size == 96
    weights = _state_dict_copy(state.model)
    metrics = _prune(state, sparsity=0.25, include=["*.mlp.*"])
    assert metrics["parameters_after"] == metrics["parameters_before"]
    assert all(torch.equal(v, state.model.state_dict()[k]) for k, v in weights.items())
    _prune(state, sparsity=0.5, heads_sparsity=0.5)                          # a schedule's next step
    assert (state.model.config.intermediate_size, state.model.config.num_key_value_heads) == (64, 1)


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_reapplying_with_data_driven_importance_is_a_no_op(importance):
    """Nothing left to cut means nothing to score: the calibration pass is skipped, not read while absent."""
    state = fresh_state()
    _prune(state, sparsity=0.25, include=["*.mlp.*"], importance=importance, round_to=32)
    assert state.model.config.intermediate_size == 96
    weights = _state_dict_copy(state.model)
    metrics = _prune(state, sparsity=0.25, include=["*.mlp.*"], importance=importance, round_to=32)
    assert metrics["parameters_after"] == metrics["parameters_before"]
    assert all(torch.equal(v, state.model.state_dict()[k]) for k, v in weights.items())


def test_recovery_steps_train_the_cut_model_through_the_runs_recovery_step():
    """recovery_steps: the run's recovery step (kd's float distillation in a pipeline) sees the cut model; none when
    nothing was cut; plain fine-tuning of the cut model when the run has no recovery step."""
    state = fresh_state()
    calls = []

    def recover(s, steps):
        calls.append((steps, s.model.config.intermediate_size))
        return {"method": "fake", "steps": steps, "history": [1, 2]}

    state.recover = recover
    metrics = _prune(state, sparsity=0.25, include=["*.mlp.*"], recovery_steps=3)
    assert calls == [(3, 96)] and metrics["recovery"] == {"method": "fake", "steps": 3}
    assert "recovery" not in _prune(state, sparsity=0.25, include=["*.mlp.*"], recovery_steps=3) and len(calls) == 1
    state = fresh_state()
    state.recover = None
    _prune(state, sparsity=0.25, include=["*.mlp.*"])
    cut = _state_dict_copy(state.model)
    state = fresh_state()
    state.recover = None
    metrics = _prune(state, sparsity=0.25, include=["*.mlp.*"], recovery_steps=2)
    assert metrics["recovery"]["steps"] == 2
    assert state.model.config.intermediate_size == 96
    assert any(not torch.equal(v, state.model.state_dict()[k]) for k, v in cut.items())  # trained after the cut


@pytest.mark.parametrize("kw, key, nearest", [
    ({"heads_sparsity": 0.3}, "pruner.heads_sparsity", "nearest: 0 or 0.5"),                 # 2 KV heads
    ({"heads_sparsity": 0.3, "heads_structure": "query_heads"}, "pruner.heads_sparsity", "nearest: 0 or 0.5"),
    # attention only, half the heads removed = 50% of its weights: more cannot be reached
    ({"sparsity": 0.6, "heads_sparsity": 0.5, "include": ["*.self_attn.*"]}, "pruner.sparsity", "less than 0.500"),
    ({"sparsity": 0.3, "include": ["*.mlp.gate_proj"]}, "pruner.include", "all of model.layers.0's mlp"),
    ({"sparsity": 0.3, "heads_sparsity": 0.5, "include": ["*.mlp.*"]}, "pruner.heads_sparsity", "0 when no attention"),
    # 128 MLP channels kept in multiples of 64: 12.5% would round to nothing removed
    ({"sparsity": 0.125, "include": ["*.mlp.*"], "round_to": 64}, "pruner.sparsity", "round_to=64; nearest MLP "
     "channel fractions: 0 or 0.5"),
])
def test_unrealisable_ratio_is_a_config_error_and_model_untouched(kw, key, nearest):
    state = fresh_state()
    weights = _state_dict_copy(state.model)
    with pytest.raises(ConfigError) as info:
        _prune(state, **kw)
    assert info.value.key == key and nearest in str(info.value)
    assert all(torch.equal(v, state.model.state_dict()[k]) for k, v in weights.items())
    assert state.model.config.num_key_value_heads == 2 and state.model.config.intermediate_size == 128


@pytest.mark.parametrize("kw, key", [({"sparsity": 1.0}, "pruner.sparsity"), ({"importance": "l1"}, "pruner.importance"),
                                     ({"round_to": 0}, "pruner.round_to"),
                                     ({"recovery_steps": -1}, "pruner.recovery_steps"),
                                     ({"heads_structure": "heads"}, "pruner.heads_structure")])
def test_bad_config_values(kw, key):
    with pytest.raises(ConfigError) as info:
        StructuredPruningConfig(**kw)
    assert info.value.key == key


def test_unsupported_architecture_is_an_error_and_model_untouched():
    """A family slimkit.toolkit.families does not describe (BLOOM): the error names the model type, the
    backend and the supported families."""
    state = fresh_state()
    state.model = BloomForCausalLM(BloomConfig(n_layer=2, n_head=2, hidden_size=32, vocab_size=512)).eval()
    weights = _state_dict_copy(state.model)
    with pytest.raises(ConfigError) as info:
        _prune(state, sparsity=0.5)
    message = str(info.value)
    assert info.value.key == "pruner" and "'bloom'" in message and "torch_pruning" in message
    assert "llama" in message and "gpt2" in message and "phi3" in message
    assert all(torch.equal(v, state.model.state_dict()[k]) for k, v in weights.items())


def test_one_unsupported_layer_leaves_the_model_whole():
    state = fresh_state()
    state.model.model.layers[3].mlp.down_proj = torch.nn.Identity()
    weights = _state_dict_copy(state.model)
    with pytest.raises(ConfigError, match=r"block 3: `down` \(down_proj\) is Identity"):
        _prune(state, sparsity=0.5, heads_sparsity=0.5)
    assert all(torch.equal(v, state.model.state_dict()[k]) for k, v in weights.items())


def test_excluded_layers_reload_through_the_plugin(tmp_path):
    state = fresh_state()
    metrics = _prune(state, sparsity=0.5, heads_sparsity=0.5, exclude=["lm_head", "model.layers.0.*", "model.layers.3.*"])
    assert metrics["uniform"] is False and state.artifact_writer is not None
    assert metrics["per_layer"]["model.layers.0"] == {"intermediate": 128, "heads": 4, "kv_heads": 2}
    assert metrics["per_layer"]["model.layers.1"] == {"intermediate": 64, "heads": 2, "kv_heads": 1}
    probe = state.data.eval[:2, :48]
    expected = model_logits(state.model, probe)
    StructuredPruner().save(state.model, tmp_path)
    reloaded = StructuredPruner.load(tmp_path, {})
    assert count_parameters(reloaded) == metrics["parameters_after"]
    assert torch.equal(model_logits(reloaded, probe), expected)


@pytest.mark.parametrize("importance, kept", [("l2", True), ("activation", False)])
def test_activation_importance_sees_dead_channels(importance, kept):
    """A channel with a large down_proj column but a zero gate never fires: weight magnitude keeps
    it, the activation-aware score removes it."""
    state = fresh_state()
    mlp = state.model.model.layers[0].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[7] = 0
        mlp.down_proj.weight[:, 7] *= 10
        marker = mlp.up_proj.weight[7].clone()
    _prune(state, sparsity=0.25, importance=importance)
    survived = bool((state.model.model.layers[0].mlp.up_proj.weight == marker).all(1).any())
    assert survived is kept


def _tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                              sliding_window=32, max_position_embeddings=256)
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


def test_gemma3_query_heads_reload_with_plain_from_pretrained(tmp_path):
    """Gemma-3 (q/k norms, 4 query heads on 1 KV head): query heads go within the group."""
    state = fresh_state()
    state.model, state.reference = _tiny_gemma3(), _tiny_gemma3()
    metrics = _prune(state, sparsity=0.5, heads_sparsity=0.5, heads_structure="query_heads")
    cfg = state.model.config
    # per layer 24,576 MLP + 10,240 attention weights; 2 of 4 query heads = 4,096 of them; the rest of
    # 0.5 * 34,816 comes from MLP channels: 13,312 / 24,576 -> round(128 * 0.458) = 59 kept
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.head_dim) == (2, 1, 59, 16)
    assert abs(metrics["achieved_sparsity"] - 0.5) < 0.01
    assert metrics["parameters_after"] < metrics["parameters_before"]
    probe = state.data.eval[:2, :48]
    expected = model_logits(state.model, probe)
    state.model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert torch.equal(model_logits(reloaded, probe), expected)


def test_gemma3_single_kv_group_cannot_be_removed():
    state = fresh_state()
    state.model, state.reference = _tiny_gemma3(), _tiny_gemma3()
    with pytest.raises(ConfigError, match="single KV head; set pruner.heads_structure=query_heads"):
        _prune(state, heads_sparsity=0.5)
