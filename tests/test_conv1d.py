"""transformers' Conv1D (GPT-2: y = x @ W + b with W stored [in, out]) is treated like nn.Linear by the
shared toolkit: module selection, the [out, in] weight view, exact Linear conversion, unstructured masks."""

import copy

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from slimkit.core.errors import ConfigError
from slimkit.testing.compat import random_windows, tiny_family_model
from slimkit.toolkit.modules import (as_conv1d, as_linear, conv1d_to_linear, in_features, out_features,
                                     select_modules, weight_matrix)

torch.set_num_threads(1)


def _conv(nx=12, nf=20, seed=0):
    torch.manual_seed(seed)
    conv = Conv1D(nf, nx)
    torch.nn.init.normal_(conv.bias)
    return conv


def test_as_linear_computes_the_same_function_and_converts_back_exactly():
    conv = _conv()
    x = torch.randn(3, 5, 12)
    linear = as_linear(conv)
    assert isinstance(linear, torch.nn.Linear) and (linear.in_features, linear.out_features) == (12, 20)
    torch.testing.assert_close(linear(x), conv(x), rtol=0, atol=1e-6)
    back = as_conv1d(linear)
    assert isinstance(back, Conv1D) and torch.equal(back.weight, conv.weight) and torch.equal(back.bias, conv.bias)


def test_weight_matrix_is_an_out_in_view_for_both_types():
    conv, linear = _conv(), torch.nn.Linear(12, 20)
    for module in (conv, linear):
        view = weight_matrix(module)
        assert view.shape == (20, 12) and (in_features(module), out_features(module)) == (12, 20)
        with torch.no_grad():
            view[3, 4] = 42.0
        assert (module.weight == 42.0).sum() == 1  # edits of the view reach the module's own tensor
    assert conv.weight[4, 3] == 42.0


def test_conv1d_to_linear_swaps_only_the_named_modules():
    model = tiny_family_model("GPT-2")
    ids = random_windows().eval
    before = model(input_ids=ids).logits
    swapped = conv1d_to_linear(model, ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc"])
    assert swapped == ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc"]
    assert isinstance(model.get_submodule("transformer.h.0.attn.c_attn"), torch.nn.Linear)
    assert isinstance(model.get_submodule("transformer.h.0.attn.c_proj"), Conv1D)
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=1e-5)


def test_selection_finds_gpt2_conv1d_layers():
    """Was: `pruner.include=['*'] is not allowed: expected patterns that leave at least one module after exclusions`."""
    model = tiny_family_model("GPT-2")
    chosen = select_modules(model, ["*"], ["lm_head"], prefix="pruner")
    assert sorted(chosen) == sorted(f"transformer.h.{i}.{m}" for i in range(2)
                                    for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    with pytest.raises(ConfigError, match="Linear/Conv1D"):
        select_modules(model, ["*.nope"], [], prefix="pruner")


@pytest.mark.parametrize("backend, settings", [("wanda", {"scope": "row"}), ("magnitude", {"pattern": "2:4"}),
                                               ("taylor", {"scope": "row"})])
def test_unstructured_masks_follow_output_rows_of_conv1d(backend, settings):
    """Row scope and N:M groups are defined on [out, in]: for a Conv1D ([in, out]) that is per column."""
    from slimkit.core.registry import default_registry
    from slimkit.core.state import PipelineState

    model = tiny_family_model("GPT-2")
    state = PipelineState(model, None, random_windows(), copy.deepcopy(model))
    cls = default_registry().get("pruner", backend)
    cls(cls.Config(sparsity=0.5, **settings)).apply(state)
    for i in range(2):
        for name in ("attn.c_attn", "mlp.c_fc", "mlp.c_proj"):
            w = weight_matrix(model.get_submodule(f"transformer.h.{i}.{name}"))  # [out, in]
            if settings.get("pattern"):
                zeros = (w.reshape(w.shape[0], -1, 4) == 0).sum(-1)
                assert (zeros == 2).all()
            else:
                assert ((w == 0).sum(1) == w.shape[1] // 2).all()
