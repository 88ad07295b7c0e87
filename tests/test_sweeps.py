"""Sweep aggregation on synthetic job folders (hand-built report.json files with a known frontier),
the baseline cache, the job wrapper (failure recorded, complete jobs skipped), pre-launch validation
and the HTML page in a real headless browser. No model is loaded here."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from slimkit import SlimkitError
from slimkit.sweeps import (
    SweepError,
    cached_baseline,
    collect,
    completed_report,
    job_dirname,
    objective,
    pareto_front,
    validate_sweep,
    write_sweep_report,
)

BASE = {"perplexity": 10.0, "size_bytes": 100e6, "decode_tokens_per_s": 20.0, "prefill_ms": 10.0}


def make_job(root: Path, name: str, overrides: list[str], ppl: float, size_mb: float, speed: float,
             sparsity: float = 0.5, bits: int = 8, status: str | None = "ok",
             tasks: dict[str, tuple[float, float]] | None = None, **final_extra) -> Path:
    """A job folder as a sweep job leaves it: .hydra/overrides.yaml, report.json, status.json;
    ``tasks`` = {name: (baseline acc, final acc)} as report.json's ``tasks`` records them."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    final = {"perplexity": ppl, "size_bytes": size_mb * 1e6, "decode_tokens_per_s": BASE["decode_tokens_per_s"] * speed,
             "prefill_ms": BASE["prefill_ms"] / speed, **final_extra}
    report = {
        "model": {"name": "synthetic"}, "data": {}, "baseline": dict(BASE), "final": final,
        "stages": [{"kind": "pruner", "backend": "magnitude", "config": {"sparsity": sparsity}},
                   {"kind": "quantizer", "backend": "quanto", "config": {"bits": bits}}],
        "ratios": {"size": BASE["size_bytes"] / final["size_bytes"], "speed": speed, "prefill_speed": speed,
                   "perplexity": ppl / BASE["perplexity"]},
        "tasks": {name: {"metric": "acc", "higher_is_better": True, "baseline": b, "final": f, "retained": f / b}
                  for name, (b, f) in (tasks or {}).items()},
    }
    (job / "report.json").write_text(json.dumps(report))
    if status:
        (job / "status.json").write_text(json.dumps({"status": status, "overrides": overrides}))
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Five jobs with a known answer.

    size–quality frontier (min size, max quality): A, B, D.  speed–quality (max, max): B, C.
    Feasible at quality >= 0.97 (ppl <= 10.309): A, B, C, E; smallest feasible: A."""
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "multirun.yaml").write_text("sweep:\n  min_quality: 0.97\n  objective: size\n")
    make_job(root, "0", ["pruner.sparsity=0.3", "quantizer.bits=4", "seed=1"], ppl=10.1, size_mb=25, speed=0.5,
             sparsity=0.3, bits=4, tasks={"sentiment": (0.8, 0.7)})
    make_job(root, "1", ["pruner.sparsity=0", "quantizer.bits=8", "seed=1"], ppl=10.0, size_mb=50, speed=1.2,
             sparsity=0.0)
    make_job(root, "2", ["pruner.sparsity=0.5", "quantizer.bits=8", "seed=1"], ppl=10.2, size_mb=60, speed=1.5)
    make_job(root, "3", ["pruner.sparsity=0.7", "quantizer.bits=2", "seed=1"], ppl=20.0, size_mb=12.5, speed=0.3,
             sparsity=0.7, bits=2)
    make_job(root, "4", ["pruner.sparsity=0.5", "quantizer.bits=4", "seed=1"], ppl=10.3, size_mb=26, speed=0.4,
             bits=4)
    return root


def names(jobs) -> set[str]:
    return {j.job for j in jobs}


def test_pareto_front_senses_and_ties():
    points = [(1, 1), (2, 3), (3, 2), (2, 3), (0.5, 0)]
    assert pareto_front(points, ("min", "max")) == [0, 1, 3, 4]  # (3,2) dominated by (2,3); ties kept
    assert pareto_front(points, ("max", "max")) == [1, 2, 3]
    assert pareto_front([], ("min", "max")) == []
    with pytest.raises(SlimkitError, match="senses"):
        pareto_front(points, ("min", "best"))


def test_collect_known_frontier_and_best_feasible(sweep: Path):
    result = collect(sweep)
    assert [j.status for j in result.jobs] == ["ok"] * 5
    assert names(result.frontier("size")) == {"0", "1", "3"}
    assert names(result.frontier("speed")) == {"1", "2"}
    assert {j.job for j in result.jobs if j.feasible} == {"0", "1", "2", "4"}
    assert result.best_feasible.job == "0"
    assert result.best_feasible.objective == pytest.approx(25.0)
    # a stricter floor moves the answer to the lossless job
    assert collect(sweep, min_quality=0.995).best_feasible.job == "1"
    job0 = result.jobs[0]
    assert (job0.sparsity, job0.bits, job0.backends["pruner"], job0.backends["quantizer"]) == (0.3, 4, "magnitude", "quanto")
    assert job0.other_overrides == ["seed=1"]
    assert job0.accuracy == {"sentiment": 0.7}
    assert job0.quality == pytest.approx(10.0 / 10.1)
    assert job0.label == "sparsity=0.3 bits=4"  # seed=1 is the same everywhere


def test_objective_penalises_infeasible_worse_than_baseline():
    report = {"baseline": dict(BASE), "final": {"perplexity": 20.0, "size_bytes": 12.5e6}}
    feasible = {"baseline": dict(BASE), "final": {"perplexity": 10.0, "size_bytes": 30e6}}
    assert objective(feasible, {"objective": "size", "min_quality": 0.97}) == pytest.approx(30.0)
    penalised = objective(report, {"objective": "size", "min_quality": 0.97})
    assert penalised > BASE["size_bytes"] / 1e6  # worse than not compressing at all
    closer = {"baseline": dict(BASE), "final": {"perplexity": 11.0, "size_bytes": 12.5e6}}
    assert BASE["size_bytes"] / 1e6 < objective(closer, {"min_quality": 0.97}) < penalised
    assert objective(report, {"objective": "perplexity"}) == 20.0
    with pytest.raises(SlimkitError, match="sweep.objective"):
        objective(report, {"objective": "accuracy"})


def test_quality_can_be_a_task_metric(sweep: Path, tiny_cfg):
    """sweep.quality=task:<name>: feasibility, the objective's penalty and the table read the task's retained score."""
    (sweep / "multirun.yaml").write_text("sweep:\n  min_quality: 0.97\n  objective: size\n  quality: task:sentiment\n")
    result = collect(sweep)
    job0 = result.jobs[0]
    assert job0.quality == pytest.approx(0.7 / 0.8) and job0.feasible is False  # perplexity alone calls it feasible
    assert all(j.quality is None for j in result.jobs[1:])  # jobs that did not score the task have no quality
    assert result.best_feasible is None
    assert collect(sweep, min_quality=0.85).best_feasible.job == "0"
    report = json.loads((sweep / "0" / "report.json").read_text())
    on_task = {"objective": "size", "quality": "task:sentiment"}
    assert objective(report, {**on_task, "min_quality": 0.85}) == pytest.approx(25.0)
    assert objective(report, {**on_task, "min_quality": 0.97}) > BASE["size_bytes"] / 1e6  # penalised
    _, paths = write_sweep_report(sweep)
    text = paths["markdown"].read_text()
    assert "| quality % | sentiment | size MB |" in text and "| 87.5 | 0.700 |" in text
    assert "retained sentiment score" in text
    assert tiny_cfg("sweep.quality=task:sentiment").sweep.quality == "task:sentiment"  # Hydra takes the colon


def test_sweep_quality_setting_is_checked():
    from slimkit import ConfigError
    from slimkit.sweeps.jobs import check_sweep_settings

    with pytest.raises(ConfigError, match="sweep.quality='accuracy'.*'perplexity' or 'task:<name>'"):
        check_sweep_settings({"quality": "accuracy"})
    with pytest.raises(ConfigError, match="'colours' is not evaluated; add it to eval.tasks"):
        check_sweep_settings({"quality": "task:colours"}, ["sentiment"])
    check_sweep_settings({"quality": "task:colours"}, ["tasks/colours.yaml"])  # a YAML's stem names its task
    check_sweep_settings({"quality": "task:mmlu_anatomy"}, ["mmlu"])  # a group's leaves are known once it loads


def test_outputs_written(sweep: Path):
    result, paths = write_sweep_report(sweep)
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[0]["pruner"] == "magnitude" and float(rows[0]["size_mb"]) == pytest.approx(25.0)
    data = json.loads(paths["json"].read_text())
    assert set(data["frontier"]["size"]) == {"0", "1", "3"} and data["best_feasible"] == "0"
    md = paths["markdown"].read_text()
    assert "best feasible: pruner.sparsity=0.3 quantizer.bits=4 seed=1" in md
    assert md.count("\n| ") == 6  # header + 5 jobs
    import matplotlib.image

    for key in ("size_plot", "speed_plot"):
        image = matplotlib.image.imread(paths[key])
        assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0.01
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and page.count("<tr class=") == 5


def test_missing_corrupt_and_failed_jobs_listed_not_fatal(sweep: Path):
    missing = sweep / "5"
    (missing / ".hydra").mkdir(parents=True)
    (missing / ".hydra" / "overrides.yaml").write_text("- pruner.sparsity=0.9\n")
    corrupt = make_job(sweep, "6", ["pruner.sparsity=0.1"], 10.0, 10, 1.0)
    (corrupt / "report.json").write_text("{not json")
    failed = sweep / "7"
    failed.mkdir()
    (failed / "status.json").write_text(json.dumps({"status": "failed", "overrides": ["quantizer.bits=2"],
                                                    "error": "ArtifactError: reload differs by 3.2"}))
    result, paths = write_sweep_report(sweep)
    status = {j.job: j.status for j in result.jobs}
    assert (status["5"], status["6"], status["7"]) == ("missing", "corrupt", "failed")
    assert names(result.frontier("size")) == {"0", "1", "3"}  # unchanged by the broken jobs
    md = paths["markdown"].read_text()
    assert "ArtifactError: reload differs by 3.2" in md and "no report.json" in md and "unreadable" in md
    assert "jobs: 8 (1 corrupt, 1 failed, 1 missing, 5 ok)" in md


def test_not_a_sweep_is_a_clear_error(tmp_path: Path, capsys):
    with pytest.raises(SweepError, match="does not exist"):
        collect(tmp_path / "nope")
    with pytest.raises(SweepError, match="not a slimkit sweep folder"):
        collect(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    with pytest.raises(SweepError, match="not a slimkit sweep folder"):
        collect(tmp_path)
    from slimkit.cli import main

    assert main(["report", str(tmp_path)]) == 2
    assert "slimkit: error:" in capsys.readouterr().err


def test_report_command_prints_best_and_frontier(sweep: Path, capsys):
    from slimkit.cli import main

    assert main(["report", str(sweep), "--min-quality", "0.995"]) == 0
    out = capsys.readouterr().out
    assert "best feasible: pruner.sparsity=0 quantizer.bits=8" in out and "size–quality frontier" in out


def test_job_dirname_is_stable_and_safe():
    assert job_dirname("pruner.sparsity=0.5,quantizer.bits=4") == "pruner.sparsity=0.5,quantizer.bits=4"
    assert job_dirname("") == "default"
    assert "/" not in job_dirname("model.path=/a/b")
    long = "x=" + "a" * 300
    assert len(job_dirname(long)) < 100 and job_dirname(long) == job_dirname(long) != job_dirname(long + "b")


def test_cached_baseline_computed_once_per_key(tmp_path: Path):
    calls = []

    def compute():
        calls.append(1)
        return {"perplexity": 12.5, "size_bytes": 7}

    settings = {"model": {"name": "tiny"}, "data": {"seq_len": 64}, "eval": {}, "sweep": {"baseline_cache": str(tmp_path)}}
    assert cached_baseline(settings, compute) == {"perplexity": 12.5, "size_bytes": 7}
    assert cached_baseline(settings, compute) == {"perplexity": 12.5, "size_bytes": 7}
    assert len(calls) == 1 and len(list(tmp_path.glob("baseline-quality-*.json"))) == 1
    other = {**settings, "data": {"seq_len": 128}}
    cached_baseline(other, compute)
    assert len(calls) == 2
    off = {**settings, "sweep": {"baseline_cache": "off"}}
    cached_baseline(off, compute)
    cached_baseline({k: v for k, v in settings.items() if k != "sweep"}, compute)  # single run: no cache
    assert len(calls) == 4


def _job_cfg(tmp_path: Path, *overrides: str):
    """A composed config with Hydra's own node, installed as the current HydraConfig (like a job)."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    from slimkit.pipeline.config import register_configs

    register_configs()
    with initialize_config_module(config_module="slimkit.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=tiny", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def hydra_job():
    from hydra.core.hydra_config import HydraConfig

    yield _job_cfg
    HydraConfig.instance().cfg = None


def test_sweep_job_records_failure_skips_complete_and_redoes(tmp_path: Path, hydra_job):
    from slimkit.sweeps import sweep_job

    cfg = hydra_job(tmp_path, "pruner.sparsity=0.5")
    job = tmp_path / "job"

    def failing(cfg, out):
        raise SystemExit(2)  # even a hard exit inside a job must not end the sweep

    assert sweep_job(cfg, job, runner=failing) is None
    status = json.loads((job / "status.json").read_text())
    assert status["status"] == "failed" and "SystemExit" in status["error"] and status["overrides"] == ["experiment=tiny", "pruner.sparsity=0.5"]

    calls = []

    def succeeding(cfg, out):
        calls.append(out)
        report = {"baseline": dict(BASE), "final": {"perplexity": 10.0, "size_bytes": 40e6}, "stages": []}
        (Path(out) / "report.json").write_text(json.dumps(report))
        return report

    assert sweep_job(cfg, job, runner=succeeding) == pytest.approx(40.0)
    assert completed_report(job, ["experiment=tiny", "pruner.sparsity=0.5"]) is not None
    assert sweep_job(cfg, job, runner=succeeding) == pytest.approx(40.0)  # skipped
    assert len(calls) == 1
    cfg.sweep.redo = True
    sweep_job(cfg, job, runner=succeeding)
    assert len(calls) == 2


def test_validate_rejects_a_value_no_backend_supports_before_launch():
    from slimkit.pipeline.config import register_configs

    register_configs()
    assert validate_sweep(["experiment=tiny", "quantizer.bits=3"]) == 0  # not a multirun: the job checks it
    with pytest.raises(SweepError, match=r"quantizer.bits=3 fails in every combination.*expected one of"):
        validate_sweep(["-m", "experiment=tiny", "quantizer=quanto", "quantizer.bits=3,8"])
    with pytest.raises(SweepError, match="pruner.sparsity=1.5"):
        validate_sweep(["-m", "experiment=tiny", "pruner.sparsity=0,1.5"])
    with pytest.raises(SweepError, match="bitz"):
        validate_sweep(["-m", "experiment=tiny", "quantizer.bitz=4,8"])
    assert validate_sweep(["-m", "experiment=tiny", "pruner.sparsity=0,0.5", "quantizer.bits=4,8"]) == 4
    # Optuna's search space from the preset is expanded too (pruner x sparsity x quantizer x bits)
    assert validate_sweep(["-m", "experiment=tiny", "+sweep=optuna_size"]) == 2 * 4 * 1 * 3
    assert validate_sweep(["-m", "experiment=tiny", "+sweep=optuna_size", "hydra.sweeper.params.pruner='choice(magnitude)'"]) == 4 * 3
    with pytest.raises(SweepError, match="quantizer.bits=3"):
        validate_sweep(["-m", "experiment=tiny", "+sweep=optuna_size", "hydra.sweeper.params.quantizer.bits='choice(3,5)'"])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless browser: apt-get install -y chromium")
def test_html_page_renders_in_headless_chromium(sweep: Path, tmp_path: Path):
    _, paths = write_sweep_report(sweep)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", paths["html"].as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "2/2 plots rendered" in dom.stdout  # the page's script saw both embedded PNGs decoded
    assert dom.stdout.count("<tr class=") == 5
    shot = tmp_path / "page.png"
    run = subprocess.run([*flags, "--window-size=1400,1800", f"--screenshot={shot}", paths["html"].as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    import matplotlib.image

    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (1800, 1400) and image.std() > 0.05  # not a blank page


def test_sweep_job_frees_the_model_between_jobs(tmp_path: Path, hydra_job):
    """A model caught in a reference cycle (as HF modules often are) is collected when the job returns."""
    import weakref

    import torch

    from slimkit.sweeps import sweep_job

    cfg = hydra_job(tmp_path)
    refs = []

    def runner(cfg, out):
        model = torch.nn.Linear(256, 256)
        model.cycle = [model]  # a cycle: refcounting alone would not free it
        refs.append(weakref.ref(model))
        return {"baseline": dict(BASE), "final": {"perplexity": 10.0, "size_bytes": 1e6}}

    sweep_job(cfg, tmp_path / "job", runner=runner)
    assert refs and refs[0]() is None
