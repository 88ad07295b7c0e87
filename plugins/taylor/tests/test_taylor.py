import copy
import dataclasses

import pytest
import torch

from slimkit.core.errors import ConfigError, DataError
from slimkit.testing import StageContract, random_token_state
from slimkit.toolkit.training import next_token_loss
from slimkit_magnitude import MagnitudePruner
from slimkit_taylor import TaylorConfig, TaylorPruner, taylor_scores
from slimkit_wanda import WandaPruner


def _state():
    return random_token_state()


class TestTaylorContract(StageContract):
    stage_cls = TaylorPruner
    configs = [{"sparsity": 0.5}, {"sparsity": 0.3, "scope": "layer", "accumulate": "absolute"},
               {"sparsity": 0.4, "scope": "global", "windows": 2},
               {"sparsity": 0.5, "pattern": "2:4"},
               {"sparsity": 0.6, "schedule": {"steps": 2, "ramp": "linear", "recovery_steps": 1}}]
    unchanged_configs = [{"sparsity": 0.0}]

    def _state(self):
        return _state()


DOWN = "model.layers.1.mlp.down_proj"


def _dead_input_state(channel: int = 5):
    """down_proj of block 1 gets input channel ``channel`` always zero (its up_proj row is zero), and
    that input's weights are made the LARGEST of the layer, so magnitude keeps them."""
    state = _state()
    mlp = state.model.model.layers[1].mlp
    with torch.no_grad():
        mlp.up_proj.weight[channel].zero_()
        mlp.down_proj.weight[:, channel] = 1.0
    return state, mlp.down_proj


@pytest.mark.parametrize("scope", ["row", "layer"])
def test_weights_on_a_dead_input_are_pruned_first_unlike_magnitude(scope):
    channel = 5
    width = _state().model.model.layers[1].mlp.down_proj.in_features
    cfg = dict(sparsity=1 / width, scope=scope, include=[DOWN])  # exactly one input column's worth of weights

    state, down = _dead_input_state(channel)
    TaylorPruner(TaylorPruner.Config(**cfg)).apply(state)
    assert (down.weight[:, channel] == 0).all(), "taylor kept weights whose input is always zero"
    assert int((down.weight == 0).sum()) == down.out_features  # and nothing else

    state, down = _dead_input_state(channel)
    MagnitudePruner(MagnitudePruner.Config(**cfg)).apply(state)
    assert (down.weight[:, channel] != 0).all(), "magnitude should keep the largest weights"


def test_weights_whose_output_is_unused_are_pruned_first_unlike_wanda():
    """v_proj row r feeds only o_proj columns that are zero: its gradient is zero, its Wanda score is not."""
    layer = "model.layers.0.self_attn.v_proj"
    row = 3

    def prepared():
        state = _state()
        attn, cfg = state.model.model.layers[0].self_attn, state.model.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        group = cfg.num_attention_heads // cfg.num_key_value_heads
        kv_head, dim = divmod(row, head_dim)
        with torch.no_grad():
            attn.v_proj.weight[row] = 1.0  # the largest weights of the layer
            for q in range(kv_head * group, (kv_head + 1) * group):
                attn.o_proj.weight[:, q * head_dim + dim] = 0.0
        return state, attn.v_proj

    cfg = dict(sparsity=1 / 32, scope="layer", include=[layer])  # v_proj: 32 rows -> exactly one row's worth
    state, v = prepared()
    assert v.out_features == 32
    TaylorPruner(TaylorPruner.Config(**cfg)).apply(state)
    assert (v.weight[row] == 0).all()
    assert int((v.weight == 0).sum()) == v.in_features

    state, v = prepared()
    WandaPruner(WandaPruner.Config(**cfg)).apply(state)
    assert (v.weight[row] != 0).all(), "wanda should keep large weights on live inputs"


def test_scores_equal_plain_autograd_and_model_is_left_as_found():
    state = _state()
    model = state.model
    model.train()
    layers = {n: m for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))}
    window = state.data.calibration[:1]
    model.lm_head.weight.requires_grad_(False)  # an unusual flag that must survive
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    got = taylor_scores(model, layers, window, accumulate="absolute")
    assert model.training and {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())

    reference = copy.deepcopy(model).eval().requires_grad_(True)
    next_token_loss(reference, window).backward()
    ref_modules = dict(reference.named_modules())
    for name in layers:
        w = ref_modules[name].weight
        torch.testing.assert_close(got[name], (w.detach() * w.grad).abs(), rtol=1e-4, atol=1e-9)

    two = taylor_scores(model, layers, state.data.calibration[:2], accumulate="squared")
    assert all(torch.isfinite(s).all() and (s >= 0).all() for s in two.values())


def test_no_calibration_windows_is_a_data_error_naming_the_key():
    state = _state()
    state.data = dataclasses.replace(state.data, calibration_samples=0)
    before = copy.deepcopy(state.model.state_dict())
    with pytest.raises(DataError, match="data.calibration_samples"):
        TaylorPruner(TaylorPruner.Config(sparsity=0.5)).apply(state)
    assert all(torch.equal(v, state.model.state_dict()[k]) for k, v in before.items()), "model changed on error"


def test_more_windows_than_calibration_is_a_data_error():
    with pytest.raises(DataError, match="pruner.windows=9"):
        TaylorPruner(TaylorPruner.Config(sparsity=0.5, windows=9)).apply(_state())


@pytest.mark.parametrize("values, key", [({"accumulate": "cubed"}, "pruner.accumulate"),
                                         ({"windows": -1}, "pruner.windows"),
                                         ({"sparsity": 1.0}, "pruner.sparsity"),
                                         ({"scope": "column"}, "pruner.scope")])
def test_bad_config_names_the_key(values, key):
    with pytest.raises(ConfigError) as info:
        TaylorConfig(**values)
    assert info.value.key == key
