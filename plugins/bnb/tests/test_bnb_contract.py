"""bitsandbytes plugin: the shared contract, the CPU 4-bit save guard, and bad input."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from slimkit_bnb import BnbConfig, BnbQuantizer

from slimkit import ConfigError
from slimkit.evaluation import model_logits
from slimkit.testing import StageContract, tiny_state


@functools.lru_cache(maxsize=1)
def _cached_state():
    return tiny_state()  # tokenizing the data slices dominates; build once, copy per test


def fresh_state():
    return copy.deepcopy(_cached_state())


class TestBnbContract(StageContract):
    stage_cls = BnbQuantizer
    configs = [{"bits": 8}, {"bits": 8, "threshold": 0.0}, {"bits": 4},
               {"bits": 4, "quant_type": "fp4", "double_quant": False, "compute_dtype": "bfloat16"},
               {"bits": 4, "overrides": {"lm_head": 8, "model.layers.0.*": 8, "model.layers.3.*": "float"}}]
    reload_atol = 1e-4

    def _state(self):
        return fresh_state()


@pytest.mark.parametrize("double_quant", [False, True])
def test_4bit_forward_then_save_then_reload_gives_same_logits(tmp_path, double_quant):
    """bitsandbytes repacks 4-bit weights for the CPU on the first forward; its own state_dict then corrupts
    them (recorded in BACKENDS.md). The plugin must save the canonical tensors and leave memory untouched."""
    state = fresh_state()
    stage = BnbQuantizer(BnbConfig(bits=4, double_quant=double_quant))
    stage.apply(state)
    probe = state.data.eval[:2, :32]
    before = model_logits(state.model, probe)  # the forward pass that triggers the CPU repacking
    stage.save(state.model, tmp_path)
    assert torch.equal(model_logits(state.model, probe), before), "saving changed the model in memory"
    reloaded = BnbQuantizer.load(tmp_path, {})
    assert torch.equal(model_logits(reloaded, probe), before)
    stage.save(reloaded, tmp_path / "again")  # a reloaded (and run) model saves faithfully too
    assert torch.equal(model_logits(BnbQuantizer.load(tmp_path / "again", {}), probe), before)


def test_quantized_modules_are_bnb_layers():
    import bitsandbytes as bnb

    state = fresh_state()
    metrics = BnbQuantizer(BnbConfig(bits=4, overrides={"model.layers.0.*": 8})).apply(state)
    mods = dict(state.model.named_modules())
    assert isinstance(mods["model.layers.0.mlp.up_proj"], bnb.nn.Linear8bitLt)
    assert isinstance(mods["model.layers.1.mlp.up_proj"], bnb.nn.Linear4bit)
    assert mods["model.layers.1.mlp.up_proj"].weight.quant_type == "nf4"
    assert type(mods["lm_head"]) is torch.nn.Linear
    assert metrics["precision_counts"] == {"int8": 7, "nf4": 21, "float32": 1}


@pytest.mark.parametrize("values, key", [({"bits": 2}, "quantizer.bits"), ({"bits": 3}, "quantizer.bits"),
                                         ({"quant_type": "int4"}, "quantizer.quant_type"),
                                         ({"compute_dtype": "float64"}, "quantizer.compute_dtype"),
                                         ({"threshold": -1.0}, "quantizer.threshold"),
                                         ({"overrides": {"lm_head": 2}}, "quantizer.overrides"),
                                         ({"budget_bits": 3.0}, "quantizer.budget_bits")])
def test_unsupported_values_rejected_naming_allowed(values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        BnbConfig(**values)
    if key == "quantizer.bits":
        assert "4, 8" in str(info.value)
