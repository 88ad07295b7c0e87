"""GPT-2's Conv1D layers (which quanto's own quantize() skips) are quantized as the equivalent nn.Linear,
and the artifact reloads them the same way."""

import copy

import pytest
import torch

from slimkit.core.state import PipelineState
from slimkit.testing.compat import random_windows, tiny_family_model

pytest.importorskip("optimum.quanto")
torch.set_num_threads(1)


@pytest.mark.parametrize("bits", [8, 4])
def test_gpt2_conv1d_layers_are_quantized_and_reload_exactly(bits, tmp_path):
    from optimum.quanto.nn import QLinear

    from slimkit_quanto import QuantoConfig, QuantoQuantizer

    model = tiny_family_model("GPT-2")
    state = PipelineState(model, None, random_windows(), copy.deepcopy(model))
    stage = QuantoQuantizer(QuantoConfig(bits=bits))
    metrics = stage.apply(state)
    assert metrics["conv1d_converted_to_linear"] == 8 and metrics["quantized_modules"] == 8  # lm_head excluded
    assert all(isinstance(model.get_submodule(f"transformer.h.{i}.{m}"), QLinear)
               for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    stage.save(model, tmp_path)
    reloaded = QuantoQuantizer.load(tmp_path, {})
    ids = state.data.eval
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
