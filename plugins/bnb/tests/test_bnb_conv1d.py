"""GPT-2's Conv1D layers (weight stored [in, out]) become bitsandbytes layers with the transposed weight."""

import copy

import pytest
import torch

from slimkit.core.state import PipelineState
from slimkit.testing.compat import random_windows, tiny_family_model
from slimkit.toolkit.modules import weight_matrix

pytest.importorskip("bitsandbytes")
torch.set_num_threads(1)


def test_gpt2_conv1d_int8_keeps_the_function():
    from slimkit_bnb import BnbConfig, BnbQuantizer

    model = tiny_family_model("GPT-2")
    float_model = copy.deepcopy(model)
    state = PipelineState(model, None, random_windows(), copy.deepcopy(model))
    metrics = BnbQuantizer(BnbConfig(bits=8, threshold=0.0)).apply(state)
    assert metrics["quantized_modules"] == 8
    conv = float_model.get_submodule("transformer.h.0.mlp.c_fc")
    x = torch.randn(4, conv.nx)
    quantized = model.get_submodule("transformer.h.0.mlp.c_fc")
    with torch.no_grad():
        err = (quantized(x) - conv(x)).abs().max() / conv(x).abs().max()
    assert err < 0.05   # int8 per-row error; the untransposed weight would give an unrelated output
    assert quantized.weight.shape == weight_matrix(conv).shape
