"""Data-parallel plumbing without launching processes: batch shards and the accelerate-launch stand-in."""

from __future__ import annotations

import pytest
import torch

from slimkit import launch
from slimkit.toolkit.training import shard


@pytest.mark.parametrize("size, world", [(4, 2), (5, 2), (7, 3), (1, 2), (3, 4)])
def test_weighted_shards_average_to_the_global_batch_mean(size, world):
    indices = torch.arange(size)
    losses = torch.rand(size, dtype=torch.float64)  # a per-window loss; each process averages its own windows
    total, covered = 0.0, []
    for rank in range(world):
        mine, weight = shard(indices, rank, world)
        assert mine.numel() >= 1  # every process runs a forward pass (the gradient all-reduce needs all of them)
        total += float(losses[mine].mean()) * weight / world  # what averaging the processes' gradients computes
        covered += mine.tolist() if weight else []
    assert total == pytest.approx(float(losses.mean()))
    assert sorted(covered) == list(range(size))


def test_one_process_is_the_whole_batch_at_weight_one():
    indices = torch.arange(6)
    mine, weight = shard(indices, 0, 1)
    assert torch.equal(mine, indices) and weight == 1.0


def test_accelerate_cpu_stand_in_is_recognised_from_the_launch_command(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    command = ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "3", "-m", "slimkit",
               "experiment=tiny"]
    monkeypatch.setattr(launch, "_parent_command", lambda: command)
    assert launch.requested_cpu_processes() == 3
    monkeypatch.setattr(launch, "_parent_command", lambda: command[:4] + ["-m", "slimkit"])  # one process asked
    assert launch.requested_cpu_processes() is None
    monkeypatch.setattr(launch, "_parent_command", lambda: ["bash"])  # not started by accelerate launch
    assert launch.requested_cpu_processes() is None
    monkeypatch.setenv("WORLD_SIZE", "2")  # already a worker (torchrun set the rank variables)
    monkeypatch.setattr(launch, "_parent_command", lambda: command)
    assert launch.requested_cpu_processes() is None
