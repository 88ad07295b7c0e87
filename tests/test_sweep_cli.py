"""`slimkit -m` end to end on the tiny model: the aggregated report after a multirun, the baseline
evaluated once, complete jobs skipped on a re-run, a failing job recorded (while a single run
still exits non-zero) and a sweep value no backend supports rejected before launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
SLIMKIT = [sys.executable, "-m", "slimkit"]  # this environment's slimkit, not the first on PATH


def slimkit(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*SLIMKIT, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # two multiruns of 4 tiny jobs: ~2 minutes on 2 busy cores
def test_multirun_writes_table_plots_html_and_skips_complete_jobs(tmp_path: Path):
    sweep = tmp_path / "sweep"
    args = ["-m", "experiment=tiny", "pruner=magnitude", "pruner.sparsity=0,0.5", "quantizer=quanto",
            "quantizer.bits=4,8", f"hydra.sweep.dir={sweep}"]
    first = slimkit(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("sweep.md", "sweep.csv", "sweep.json", "sweep.html", "pareto_size.png", "pareto_speed.png"):
        assert (sweep / name).is_file(), name
    data = json.loads((sweep / "sweep.json").read_text())
    jobs = data["jobs"]
    assert len(jobs) == 4 and {j["status"] for j in jobs} == {"ok"}
    assert sorted((j["sparsity"], j["bits"]) for j in jobs) == [(0.0, 4), (0.0, 8), (0.5, 4), (0.5, 8)]
    assert all(j["size_mb"] and j["speed_ratio"] and j["perplexity"] for j in jobs)
    assert data["frontier"]["size"] and data["best_feasible"]
    assert "slimkit sweep report:" in first.stdout  # the on_multirun_end callback ran

    # the baseline's quality and size were measured once and reused by the other three jobs
    assert len(list((sweep / ".slimkit").glob("baseline-quality-*.json"))) == 1
    reports = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/report.json")}
    assert len({r["baseline"]["perplexity"] for r in reports.values()}) == 1
    logs = [p.read_text() for p in sweep.glob("*/cli.log")]
    assert sum("baseline quality metrics reused" in text for text in logs) == 3

    # same command again: every job is found complete and skipped; nothing is recomputed
    stamps = {p: p.stat().st_mtime_ns for p in sweep.glob("*/report.json")}
    again = slimkit(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("is complete; skipping it") == 4
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/report.json")} == stamps


def test_failing_job_is_recorded_and_single_run_still_fails(tmp_path: Path):
    sweep = tmp_path / "sweep"
    run = slimkit("-m", "experiment=tiny", "model.path=/nonexistent/slimkit-model", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]  # the sweep survives its failed job
    (job,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    status = json.loads((job / "status.json").read_text())
    assert status["status"] == "failed" and "/nonexistent/slimkit-model" in status["error"]
    table = (sweep / "sweep.md").read_text()
    assert "| failed |" in table and "/nonexistent/slimkit-model" in table

    single = slimkit("experiment=tiny", "model.path=/nonexistent/slimkit-model", f"hydra.run.dir={tmp_path / 'one'}",
                     cwd=tmp_path)
    assert single.returncode != 0 and "slimkit: error:" in single.stderr


def test_unsupported_sweep_value_rejected_before_launch(tmp_path: Path):
    sweep = tmp_path / "sweep"
    run = slimkit("-m", "experiment=tiny", "quantizer=quanto", "quantizer.bits=3,8", f"hydra.sweep.dir={sweep}",
                  cwd=tmp_path)
    assert run.returncode == 2
    assert "quantizer.bits=3" in run.stderr and "expected one of" in run.stderr
    assert not sweep.exists()  # nothing launched


def test_report_on_foreign_directory(tmp_path: Path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "readme.txt").write_text("not a sweep")
    run = slimkit("report", str(tmp_path / "foreign"), cwd=tmp_path)
    assert run.returncode == 2 and "not a slimkit sweep folder" in run.stderr


@pytest.mark.slow  # 4 tiny jobs across backends: ~1-2 minutes on 2 busy cores
def test_cross_backend_sweep_reports_comparable_sparsity_and_bits(tmp_path: Path):
    """One sparsity means one thing for an unstructured and a structured pruner, and every file size
    reflects both stages: the sweep table's achieved_sparsity and bits_per_weight columns say so."""
    import csv

    sweep = tmp_path / "sweep"
    run = slimkit("-m", "experiment=tiny", "pruner=magnitude,torch_pruning", "pruner.sparsity=0.5",
                  "quantizer=quanto,int8", "eval.latency=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        # half of the selected Linear weights zeroed (magnitude) or removed (torch_pruning: channels)
        assert abs(float(row["achieved_sparsity"]) - 0.5) < 0.03, row
        assert 0 < float(row["bits_per_weight"]) < 32
    # the zeros of the unstructured pruner survive each quantizer's format: its files are smaller than a
    # dense int8 model of the same parameters (8 bits per weight, plus the float embedding/norms)
    magnitude = {r["quantizer"]: float(r["bits_per_weight"]) for r in rows if r["pruner"] == "magnitude"}
    reports = [json.loads(p.read_text()) for p in sweep.glob("*/report.json")]
    assert all(r["final"]["achieved_sparsity"] == pytest.approx(0.5, abs=0.03) for r in reports)
    # bits per parameter *of the original model*, the same denominator for a pruner that removes weights
    assert len({r["model"]["parameters"] for r in reports}) == 1
    for r in reports:
        assert r["final"]["bits_per_weight"] == pytest.approx(8 * r["final"]["size_bytes"] / r["model"]["parameters"])
    structured = [r for r in reports if r["stages"][0]["backend"] == "torch_pruning"]
    unstructured = [r for r in reports if r["stages"][0]["backend"] == "magnitude"]
    for s in structured:  # removed weights make a smaller file than zeroed ones stored sparsely, same quantizer
        same = next(u for u in unstructured if u["stages"][1]["backend"] == s["stages"][1]["backend"])
        assert s["final"]["bits_per_weight"] < same["final"]["bits_per_weight"]
    assert set(magnitude) == {"quanto", "int8"}
