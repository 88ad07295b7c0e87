"""The shared training loop: finetune's contract, batch order, checkpoints (no data download needed)."""

from __future__ import annotations

import copy

import pytest
import torch

from slimkit import ConfigError
from slimkit.data import DataSplits
from slimkit.models import tiny_model
from slimkit.core.state import PipelineState
from slimkit.toolkit.training import LoopSettings, batch_indices, checkpoints, finetune, next_token_loss, train_loop


def _state(seed=0):
    torch.manual_seed(seed)
    model = tiny_model(seed)
    train = torch.randint(0, 512, (12, 16), generator=torch.Generator().manual_seed(1))
    data = DataSplits(train, train[:2], 16, 2, {})
    return PipelineState(model, None, data, copy.deepcopy(model).requires_grad_(False), seed=seed)


def test_batch_order_is_a_permutation_per_epoch_and_reproducible():
    epoch = torch.cat([batch_indices(10, 4, step, seed=3) for step in range(3)])
    assert sorted(epoch.tolist()) == list(range(10))
    assert torch.equal(batch_indices(10, 4, 4, seed=3), batch_indices(10, 4, 4, seed=3))
    assert not torch.equal(torch.cat([batch_indices(10, 4, s, 3) for s in range(3, 6)]), epoch)  # next epoch reshuffled


@pytest.mark.parametrize("zero_masks", [True, False])
def test_finetune_keeps_mask_zeros_and_lowers_the_loss(zero_masks):
    state = _state()
    state.zero_masks = zero_masks  # set by unstructured pruners; structured ones remove weights instead
    w = state.model.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        w[:, :10] = 0
    metrics = finetune(state, 8, lr=5e-3, batch_size=4)
    assert metrics["steps"] == 8 and metrics["last_loss"] < metrics["first_loss"]
    kept = torch.all(state.model.model.layers[0].mlp.down_proj.weight[:, :10] == 0)
    assert bool(kept) == zero_masks
    assert finetune(state, 0) == {"steps": 0}


def test_checkpoints_resume_exactly(tmp_path):
    def loss_fn(model, batch):
        return next_token_loss(model, batch), {}

    full, part, resumed = _state(), _state(), _state()
    common = dict(lr=1e-3, batch_size=4, checkpoint_every=2, keep_checkpoints=1, fingerprint={"m": "a"})
    train_loop(full.model, loss_fn, full.data.train, LoopSettings(max_steps=6, checkpoint_dir=tmp_path / "a", **common))
    train_loop(part.model, loss_fn, part.data.train, LoopSettings(max_steps=4, checkpoint_dir=tmp_path / "b", **common))
    assert [p.name for p in checkpoints(tmp_path / "b")] == ["step-0000004"]  # keep_checkpoints=1
    metrics = train_loop(resumed.model, loss_fn, resumed.data.train,
                         LoopSettings(max_steps=6, checkpoint_dir=tmp_path / "b", resume=True, **common))
    assert metrics["resumed_from_step"] == 4 and metrics["steps_this_run"] == 2
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    other = dict(common, fingerprint={"m": "b"})
    with pytest.raises(ConfigError, match="differs in m"):
        train_loop(_state().model, loss_fn, full.data.train,
                   LoopSettings(max_steps=8, checkpoint_dir=tmp_path / "b", resume=True, **other))
