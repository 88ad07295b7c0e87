"""The case study's chain (prune with kd recovery -> dropped-layer kd -> quantize) through the CLI."""

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
    run = subprocess.run([sys.executable, "-m", "slimkit", "experiment=case_study_tiny", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    kinds = [(s["kind"], s["backend"]) for s in report["stages"]]
    assert kinds == [("pruner", "magnitude"), ("distiller", "kd"), ("quantizer", "int8")]
    pruner, kd, _ = (s["metrics"] for s in report["stages"])
    recoveries = [h["recovery"] for h in pruner["schedule"]["history"]]
    assert [(r["method"], r["steps"]) for r in recoveries] == [("kd", 2), ("kd", 2)]  # kd.recover between steps
    assert kd["kept_layers"] == [0, 2] and kd["steps"] == 6 and kd["masked_parameters"] > 0
    assert kd["student_parameters"] < kd["teacher_parameters"]
    assert (tmp_path / "checkpoints" / "step-0000006" / "model.safetensors").is_file()
    assert report["final"]["reload_max_abs_logit_diff"] <= 1e-4
    assert report["ratios"]["size"] > 2.0
    model = slimkit.load(tmp_path / "model")
    assert model.config.num_hidden_layers == 2
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_case_study_presets_compose_and_resolve():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from slimkit.config import register_configs
    from slimkit.pipeline import resolve_stages
    from slimkit.registry import default_registry

    register_configs()
    with initialize_config_module("slimkit.conf", version_base="1.3"):
        for preset in ("case_study", "case_study_tiny"):
            cfg = OmegaConf.to_container(compose("config", overrides=[f"experiment={preset}"]), resolve=True)
            stages = resolve_stages(cfg, default_registry())  # configs validated, nothing loaded
            names = [(info.kind.value, info.name) for _, info in stages]
            assert ("distiller", "kd") in names and names[-1][0] == "quantizer"
            assert stages[[n for n, _ in names].index("distiller")][0].config.student_layers == "every_other"
        cfg = compose("config", overrides=["distiller=kd_qat4", "quantizer=quanto", "quantizer.bits=4"])
        kd = resolve_stages(OmegaConf.to_container(cfg, resolve=True), default_registry())
        assert [s.config.qat_bits for s, i in kd if i.name == "kd"] == [4]
