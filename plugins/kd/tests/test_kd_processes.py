"""Data-parallel distillation for real: ``accelerate launch --cpu --num_processes 2 -m slimkit ...`` (two CPU
processes over gloo) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slimkit
from slimkit.evaluation import model_logits

# the tiny experiment with its default pruner and quantizer; 32 training windows, 6 steps of 4 windows
ARGS = ["experiment=tiny", "distiller=kd", "distiller.max_steps=6", "distiller.batch_size=4", "distiller.eval_every=0",
        "distiller.lr=1e-3", "eval.latency=false"]


def _slimkit(launcher: list[str], run_dir: Path, cwd: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*launcher, "-m", "slimkit", *ARGS, f"hydra.run.dir={run_dir}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((run_dir / "report.json").read_text())


@pytest.mark.slow
def test_two_cpu_processes_train_like_one_with_the_same_global_batch(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    two = _slimkit([accelerate, "launch", "--cpu", "--num_processes", "2"], tmp_path / "two", tmp_path)
    one = _slimkit([sys.executable], tmp_path / "one", tmp_path)

    kd_two, kd_one = (next(s for s in r["stages"] if s["backend"] == "kd")["metrics"] for r in (two, one))
    assert kd_two["processes"] == 2 and kd_one["processes"] == 1
    assert kd_two["teacher_device"].startswith("cpu") and kd_two["steps"] == 6  # accelerate names it cpu:0 when distributed
    assert kd_two["last_loss"] != kd_two["first_loss"]  # it trained
    for key in ("first_loss", "last_loss", "perplexity"):
        assert kd_two[key] == pytest.approx(kd_one[key], rel=1e-4), key
    assert two["final"]["perplexity"] == pytest.approx(one["final"]["perplexity"], rel=1e-4)
    probe = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    diff = (model_logits(slimkit.load(two["artifact"]), probe) - model_logits(slimkit.load(one["artifact"]), probe))
    assert diff.abs().max().item() < 1e-3

    # only the main process wrote: one run folder per launch, nothing else in the working directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
