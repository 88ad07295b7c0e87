"""What distillation does: the loss, training, dropped-layer students, resume, masks, recovery."""

from __future__ import annotations

import math

import pytest
import torch
from kd_helpers import fresh_state
from slimkit_kd import KDConfig, KDDistiller, drop_layers, kd_logit_loss
from transformers import AutoModelForCausalLM

from slimkit.toolkit.training import checkpoints


def _val_loss(stage, state, model, windows):
    loss_fn = stage._loss_fn(stage.teacher(state), None)
    with torch.no_grad():
        return loss_fn(model, windows)[0].item()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kl_is_zero_when_student_is_teacher(temperature):
    torch.manual_seed(0)
    logits = torch.randn(2, 9, 50) * 3
    ids = torch.randint(0, 50, (2, 9))
    loss, parts = kd_logit_loss(logits, logits.clone(), ids, temperature, alpha=1.0)
    assert abs(parts["kl"]) < 1e-5 and abs(loss.item()) < 1e-5


def test_kl_matches_the_formula():
    torch.manual_seed(1)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    T, alpha = 2.0, 0.3
    loss, parts = kd_logit_loss(s, t, ids, T, alpha)
    p_t = torch.softmax(t[:, :-1] / T, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s[:, :-1] / T, -1))).sum(-1).mean() * T * T
    ce = torch.nn.functional.cross_entropy(s[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    assert parts["kl"] == pytest.approx(kl.item(), rel=1e-5)
    assert loss.item() == pytest.approx(alpha * kl.item() + (1 - alpha) * ce.item(), rel=1e-5)


def test_loss_decreases_on_held_out_windows():
    state = fresh_state()
    stage = KDDistiller(KDConfig(student_layers="every_other", max_steps=15, lr=3e-3, batch_size=4, eval_every=5))
    val = state.data.train[-3:]
    student = drop_layers(state.model, [0, 2])
    before = _val_loss(stage, state, student, val)
    metrics = stage.apply(state)
    after = _val_loss(stage, state, state.model, val)
    assert metrics["steps"] == 15 and metrics["kept_layers"] == [0, 2]
    assert metrics["validation_windows"] == 3 and metrics["train_windows"] == state.data.train.shape[0] - 3
    assert after < before - 0.1, (before, after)
    assert metrics["last_loss"] < metrics["first_loss"]


def test_dropped_layer_student_reloads_with_from_pretrained(tmp_path):
    state = fresh_state()
    KDDistiller(KDConfig(student_layers=[1, 3], max_steps=1, eval_every=0)).apply(state)
    student = state.model
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = state.data.eval[:1, :20]
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-5)
        cached = reloaded.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = reloaded.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_drop_layers_patches_per_layer_config_lists(tmp_path):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                              max_position_embeddings=128)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    types = list(model.config.layer_types)
    student = drop_layers(model, [0, 2, 5])
    assert student.config.layer_types == [types[0], types[2], types[5]]
    assert model.config.num_hidden_layers == 6  # the original is untouched
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.randint(0, 128, (1, 20))
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-5)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_continues_from_the_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    common = dict(student_layers="every_other", lr=2e-3, batch_size=4, eval_every=2, checkpoint_every=3)
    full = fresh_state()
    full.work_dir = tmp_path / "full"
    KDDistiller(KDConfig(max_steps=6, **common)).apply(full)

    first = fresh_state()
    first.work_dir = tmp_path / "interrupted"
    KDDistiller(KDConfig(max_steps=3, **common)).apply(first)
    assert [p.name for p in checkpoints(first.work_dir / "checkpoints")] == ["step-0000003"]

    resumed = fresh_state()  # a new process would rebuild the same student, then load the checkpoint
    resumed.work_dir = tmp_path / "interrupted"
    metrics = KDDistiller(KDConfig(max_steps=6, resume=True, **common)).apply(resumed)
    assert metrics["resumed_from_step"] == 3 and metrics["steps_this_run"] == 3 and metrics["steps"] == 6
    a, b = _weights(full.model), _weights(resumed.model)
    assert a.keys() == b.keys()
    for name in a:  # same batches (a function of step and seed), same optimizer state: same weights
        assert torch.equal(a[name], b[name]), name
    ckpt = checkpoints(resumed.work_dir / "checkpoints")[-1]
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.safetensors", "trainer.json"]


def test_early_stop_when_validation_stops_improving():
    state = fresh_state()
    metrics = KDDistiller(KDConfig(max_steps=40, lr=0.5, grad_clip=0.0, eval_every=1, patience=2)).apply(state)
    assert metrics["stopped_early"] and metrics["steps"] < 40
    assert metrics["steps"] >= metrics["best_step"] + 2


@pytest.mark.parametrize("pruned", [True, False])
def test_pruned_zeros_stay_zero(pruned):
    state = fresh_state()
    state.applied = ["pruner"]  # a pruner ran in both cases: unstructured (zero masks) or structured (none)
    state.zero_masks = pruned
    weight = state.model.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        weight[:, ::2] = 0.0
    zeros, before = weight == 0, weight.detach().clone()
    metrics = KDDistiller(KDConfig(max_steps=4, lr=1e-2, eval_every=0)).apply(state)
    after = state.model.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(after[~zeros], before[~zeros])  # the rest did train
    if pruned:  # an unstructured pruner ran: its zeros are masks and stay
        assert torch.all(after[zeros] == 0) and metrics["masked_parameters"] >= 1
    else:  # after a structured pruner (or none), zeros (e.g. of dequantized GGUF grids) are ordinary weights
        assert not torch.all(after[zeros] == 0) and metrics["masked_parameters"] == 0


def test_kd_is_the_recovery_hook_of_pruning_schedules():
    from slimkit.core.plugin import Kind
    from slimkit.core.registry import default_registry
    from slimkit.pipeline import recovery_hook

    stage = KDDistiller(KDConfig(lr=1e-2))
    hook = recovery_hook([(stage, default_registry().info(Kind.DISTILLER, "kd"))])
    assert hook == stage.recover
    state = fresh_state()
    before = _weights(state.model)
    metrics = hook(state, 3)
    assert metrics["method"] == "kd" and metrics["steps"] == 3 and math.isfinite(metrics["last_loss"])
    assert any(not torch.equal(before[k], v) for k, v in state.model.state_dict().items())


def test_qat_trains_through_quanto_and_leaves_plain_linear_layers():
    state = fresh_state()
    metrics = KDDistiller(KDConfig(max_steps=3, lr=1e-2, qat_bits=4, eval_every=0)).apply(state)
    assert metrics["qat_modules"] == 4 * 7 and metrics["qat_bits"] == 4
    from optimum.quanto.nn import QLinear

    assert not any(isinstance(m, QLinear) for m in state.model.modules())
    assert type(state.model.model.layers[0].mlp.up_proj) is torch.nn.Linear
    assert metrics["last_loss"] < metrics["first_loss"]


def test_hidden_mse_is_zero_for_a_copy_and_uses_pre_norm_layer_outputs():
    state = fresh_state()
    stage = KDDistiller(KDConfig(hidden_weight=1.0, alpha=1.0))
    layer_map = stage._layer_map(state.model, state.reference, None, 4)
    assert layer_map == [[0, 0], [1, 1], [2, 2], [3, 3]]
    loss, parts = stage._loss_fn(state.reference, layer_map)(state.model, state.data.train[:2])
    assert parts["hidden_mse"] < 1e-10 and loss.item() < 1e-5
    # a half-depth student maps its layers to the teacher layers it was cut from
    student = drop_layers(state.model, [1, 3])
    assert stage._layer_map(student, state.reference, [1, 3], 4) == [[0, 1], [1, 3]]
    _, parts = stage._loss_fn(state.reference, [[0, 1]])(student, state.data.train[:2])
    assert parts["hidden_mse"] < 3.0  # layer outputs, not the final-normed stream (which is ~1000x off here)


def test_qat_uses_the_following_quantizers_grid_when_it_offers_one():
    state = fresh_state()
    calls = []

    def simulate(model):  # stands in for a quantizer's Stage.simulate: one parametrized module
        from torch.nn.utils import parametrize

        module = model.model.layers[0].mlp.up_proj
        parametrize.register_parametrization(module, "weight", torch.nn.Identity())
        calls.append(module)
        return lambda: parametrize.remove_parametrizations(module, "weight", leave_parametrized=False) or 1

    state.simulate_quantization = simulate
    metrics = KDDistiller(KDConfig(max_steps=2, lr=1e-2, qat_bits=4, eval_every=0)).apply(state)
    assert metrics["qat_grid"] == "quantizer" and metrics["qat_modules"] == 1 and len(calls) == 1
    assert type(state.model.model.layers[0].mlp.up_proj.weight) is torch.nn.Parameter  # simulation removed
    quanto = KDDistiller(KDConfig(max_steps=1, qat_bits=4, qat_grid="quanto", eval_every=0)).apply(fresh_state())
    assert quanto["qat_grid"] == "quanto"
