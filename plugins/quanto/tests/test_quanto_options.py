"""quanto-specific behaviour: activation calibration round trip, mixed precision, bad input."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from slimkit import ConfigError, DataError
from slimkit.evaluation import model_logits
from slimkit.testing import tiny_state
from slimkit_quanto import QuantoConfig, QuantoQuantizer


@functools.lru_cache(maxsize=1)
def _cached_state():
    return tiny_state()  # tokenizing the data slices dominates; build once, copy per test


def fresh_state():
    return copy.deepcopy(_cached_state())


def test_w8a8_reload_keeps_calibration_streamline_choices(tmp_path):
    """Calibration removes output quantization where outputs feed float ops; the reload must too."""
    from optimum.quanto.nn import QModuleMixin

    state = fresh_state()
    stage = QuantoQuantizer(QuantoConfig(bits=8, activations="int8-tensor"))
    stage.apply(state)
    probe = state.data.eval[:2, :32]
    before = model_logits(state.model, probe)
    stage.save(state.model, tmp_path)
    reloaded = QuantoQuantizer.load(tmp_path, {})
    hooks = {n: len(m._forward_hooks) for n, m in state.model.named_modules() if isinstance(m, QModuleMixin)}
    hooks_again = {n: len(m._forward_hooks) for n, m in reloaded.named_modules() if isinstance(m, QModuleMixin)}
    assert hooks == hooks_again
    assert torch.equal(model_logits(reloaded, probe), before)


def test_mixed_precision_map_and_effective_bits():
    state = fresh_state()
    metrics = QuantoQuantizer(QuantoConfig(bits=4, overrides={"model.layers.0.*": 8, "model.layers.1.mlp.*": "float"})
                              ).apply(state)
    pm = metrics["precision_map"]
    assert pm["model.layers.0.self_attn.q_proj"] == "int8"
    assert pm["model.layers.1.mlp.up_proj"] == "float32"
    assert pm["model.layers.2.mlp.up_proj"] == "int4"
    assert pm["lm_head"] == "float32"  # excluded by default
    from optimum.quanto.nn import QModuleMixin

    mods = dict(state.model.named_modules())
    assert mods["model.layers.0.self_attn.q_proj"].weight_qtype.bits == 8
    assert mods["model.layers.2.mlp.up_proj"].weight_qtype.bits == 4
    assert not isinstance(mods["model.layers.1.mlp.up_proj"], QModuleMixin)


def test_activations_without_calibration_data_is_a_clear_error():
    stage = QuantoQuantizer(QuantoConfig(bits=8, activations="int8-tensor"))
    with pytest.raises(ConfigError, match="data.calibration_samples"):
        stage.check_before_load({"data": {"calibration_samples": 0}})
    state = fresh_state()
    state.data.calibration_samples = 0
    with pytest.raises(DataError, match="calibration"):
        stage.apply(state)


@pytest.mark.parametrize("values, key", [({"bits": 3}, "quantizer.bits"), ({"activations": "int8-token"}, "quantizer.activations"),
                                         ({"overrides": {"lm_head": 16}}, "quantizer.overrides"),
                                         ({"budget_bits": 1.5}, "quantizer.budget_bits")])
def test_bad_values_rejected_at_config_time(values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        QuantoConfig(**values)
