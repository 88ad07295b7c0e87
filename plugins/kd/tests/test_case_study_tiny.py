"""The case study's chain (structured prune -> kd recovery from the original -> int8) through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import slimkit


def test_case_study_tiny_runs_through_the_cli(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the slimkit command of this interpreter's environment (not whatever `slimkit` is first on PATH)
    run = subprocess.run([sys.executable, "-m", "slimkit", "experiment=case_study_tiny", "pruner.recovery_steps=2",
                          "distiller.recovery_lr=3e-4", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    kinds = [(s["kind"], s["backend"]) for s in report["stages"]]
    assert kinds == [("pruner", "torch_pruning"), ("distiller", "kd"), ("quantizer", "int8")]
    pruner, kd, _ = (s["metrics"] for s in report["stages"])
    assert pruner["intermediate_size"] == 80 and pruner["uniform"]       # 37.5% of 128 MLP channels removed
    # float distillation from the original right after the cut, at the distiller's recovery_lr
    assert (pruner["recovery"]["method"], pruner["recovery"]["steps"], pruner["recovery"]["lr"]) == ("kd", 2, 3e-4)
    assert "kept_layers" not in kd and kd["steps"] == 6                   # same depth: recovery, not layer dropping
    assert kd["student_parameters"] == pruner["parameters_after"] < kd["teacher_parameters"]
    assert (tmp_path / "checkpoints" / "step-0000006" / "model.safetensors").is_file()
    assert report["final"]["reload_max_abs_logit_diff"] <= 1e-4
    assert report["ratios"]["size"] > 2.0
    model = slimkit.load(tmp_path / "model")
    assert model.config.num_hidden_layers == 4 and model.config.intermediate_size == 80
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_kd_recovers_between_schedule_steps_then_drops_layers_through_the_cli(tmp_path):
    """The earlier case-study chain (magnitude schedule with kd recovery -> half-depth kd student -> int8)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["model=tiny", "data=tiny", "eval=fast", "pruner=magnitude", "pruner.sparsity=0.3",
            "pruner.schedule.steps=2", "pruner.schedule.recovery_steps=2", "distiller=kd",
            "distiller.student_layers=every_other", "distiller.max_steps=4", "distiller.lr=1e-3", "quantizer=int8"]
    run = subprocess.run([sys.executable, "-m", "slimkit", *args, f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    pruner, kd, _ = (s["metrics"] for s in report["stages"])
    recoveries = [h["recovery"] for h in pruner["schedule"]["history"]]
    assert [(r["method"], r["steps"]) for r in recoveries] == [("kd", 2), ("kd", 2)]  # kd.recover between steps
    assert kd["kept_layers"] == [0, 2] and kd["steps"] == 4 and kd["masked_parameters"] > 0
    assert slimkit.load(tmp_path / "model").config.num_hidden_layers == 2


def test_case_study_presets_compose_and_resolve():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from slimkit.core.registry import default_registry
    from slimkit.pipeline import resolve_stages
    from slimkit.pipeline.config import register_configs

    register_configs()
    with initialize_config_module("slimkit.conf", version_base="1.3"):
        for preset in ("case_study", "case_study_tiny"):
            cfg = OmegaConf.to_container(compose("config", overrides=[f"experiment={preset}"]), resolve=True)
            stages = resolve_stages(cfg, default_registry())  # configs validated, nothing loaded
            names = [(info.kind.value, info.name) for _, info in stages]
            assert names == [("pruner", "torch_pruning"), ("distiller", "kd"), ("quantizer", "int8")]
            pruner, kd = stages[0][0].config, stages[1][0].config
            assert pruner.importance == "activation" and pruner.sparsity > 0   # l2 scores collapse the model
            assert kd.student_layers is None                                    # recovery at the pruned depth
        cfg = compose("config", overrides=["distiller=kd_qat4", "quantizer=quanto", "quantizer.bits=4"])
        kd = resolve_stages(OmegaConf.to_container(cfg, resolve=True), default_registry())
        assert [s.config.qat_bits for s, i in kd if i.name == "kd"] == [4]
