"""Quantization-aware training on AutoRound's grid: the simulation computes exactly the weights the stage then
writes, passes gradients to the float weights, and leaves them (and the embedding tie) in place when removed."""

import pytest
import torch

pytest.importorskip("auto_round")

from slimkit import ConfigError  # noqa: E402
from slimkit.evaluation import model_logits  # noqa: E402
from slimkit.testing import random_token_state  # noqa: E402
from slimkit_autoround import AutoRoundConfig, AutoRoundQuantizer  # noqa: E402


@pytest.mark.parametrize("values", [dict(method="rtn", group_size=32, sym=True, embedding="int4"),
                                    dict(method="rtn", group_size=32, sym=True, embedding="int8", embedding_group_size=-1),
                                    dict(method="rtn", group_size=16, sym=False, bits=4),
                                    dict(method="rtn", group_size=32, sym_grid="gptq", embedding="int8", embedding_group_size=-1),
                                    dict(method="rtn", group_size=32, sym=True, overrides={"*.mlp.down_proj": 8})])
def test_simulated_forward_is_the_quantized_model(values):
    state = random_token_state()
    model = state.model
    stage = AutoRoundQuantizer(AutoRoundConfig(**values))
    tokens = state.data.eval[:2]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    original = model_logits(model, tokens)
    undo = stage.simulate(model)
    simulated = model_logits(model, tokens)
    assert (simulated - original).abs().max() > 1e-3  # the rounding is really simulated
    restored = undo()
    assert restored > 0
    for n, p in model.named_parameters():  # the simulation changed nothing it leaves behind
        assert torch.equal(p, before[n]), n
    if values.get("embedding") in ("int4", "int8"):
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight

    stage.apply(state)
    quantized = model_logits(state.model, tokens)
    assert torch.allclose(simulated, quantized, atol=1e-5, rtol=0), (simulated - quantized).abs().max()


def test_gradients_reach_the_float_weights_through_the_rounding():
    state = random_token_state()
    model = state.model.train().requires_grad_(True)
    undo = AutoRoundQuantizer(AutoRoundConfig(method="rtn", group_size=32, embedding="int4")).simulate(model)
    loss = model(state.data.eval[:1], labels=state.data.eval[:1]).loss
    loss.backward()
    table = model.get_input_embeddings().parametrizations.weight.original
    assert table.grad is not None and table.grad.abs().sum() > 0
    proj = model.model.layers[0].self_attn.q_proj.parametrizations.weight.original
    assert proj.grad is not None and proj.grad.abs().sum() > 0
    undo()
    assert model.get_input_embeddings().weight.grad is not None  # the same Parameter, back in place


def test_budget_mode_cannot_be_simulated():
    state = random_token_state()
    stage = AutoRoundQuantizer(AutoRoundConfig(method="rtn", budget_bits=6.0))
    with pytest.raises(ConfigError) as info:
        stage.simulate(state.model)
    assert info.value.key == "quantizer.budget_bits"
