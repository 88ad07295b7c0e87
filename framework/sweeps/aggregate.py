"""Aggregation: read every job of a sweep folder, quality and objective, Pareto fronts."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

from slimkit.core.errors import ConfigError, SlimkitError
from slimkit.sweeps.jobs import (
    check_sweep_settings,
    identity,
    objective,
    quality,
    read_json,
)
from slimkit.sweeps.naming import (
    COLUMN_KEYS,
    KINDS,
    REPORT_FILE,
    STATUS_FILE,
    SweepError,
    override_key,
)

log = logging.getLogger("slimkit.sweeps")

@dataclasses.dataclass
class Job:
    """One row of the sweep table."""

    job: str
    status: str  # ok | failed | missing | corrupt | running
    overrides: list[str]
    backends: dict[str, str | None]
    sparsity: float | None = None
    bits: Any = None
    #: fraction of the original Linear weights zeroed or removed (report.json final.achieved_sparsity)
    achieved_sparsity: float | None = None
    #: stored bits per parameter of the original model (file size x 8 / parameters; final.bits_per_weight)
    bits_per_weight: float | None = None
    #: how the speed ratios were timed (report.json timing.condition) and over how many fresh processes
    timing: str | None = None
    perplexity: float | None = None
    quality: float | None = None
    accuracy: dict[str, float] = dataclasses.field(default_factory=dict)
    size_mb: float | None = None
    size_ratio: float | None = None
    speed_ratio: float | None = None
    prefill_ratio: float | None = None
    objective: float | None = None
    feasible: bool | None = None
    pareto_size: bool = False
    pareto_speed: bool = False
    error: str = ""
    model: str | None = None
    baseline: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the overrides that differ between the sweep's jobs (plot labels)
    label: str = ""
    #: exports measured in their runtimes (exporter=...): exporter, runtime, format, size, quality, speed
    deployments: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def other_overrides(self) -> list[str]:
        return [o for o in self.config_overrides if override_key(o) not in COLUMN_KEYS]

    @property
    def config_overrides(self) -> list[str]:
        """The overrides that define the job's result (not the launcher/search preset or objective)."""
        keep = set(identity(self.overrides))
        return [o for o in self.overrides if o in keep]

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["other_overrides"] = self.other_overrides
        return data



def _read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 - unreadable metadata is reported as missing, never fatal
        return None


def _is_job_dir(path: Path) -> bool:
    return ((path / ".hydra" / "overrides.yaml").is_file() or (path / REPORT_FILE).exists()
            or (path / STATUS_FILE).exists())


def find_jobs(sweep_dir: str | Path) -> list[Path]:
    """Job folders under ``sweep_dir`` (hidden folders and artifacts skipped); raises
    :class:`SweepError` if the folder does not exist or holds no sweep."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise SweepError(f"sweep folder {str(root)!r} does not exist (pass the hydra.sweep.dir of a multirun)")
    if _is_job_dir(root) and not (root / "multirun.yaml").exists():
        return [root]  # a single run's folder: a sweep of one
    jobs = []
    for current, dirs, _files in os.walk(root):
        here = Path(current)
        if here != root and _is_job_dir(here):
            jobs.append(here)
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "model")
    if not jobs:
        if (root / "multirun.yaml").exists():
            raise SweepError(f"sweep folder {str(root)!r} has a multirun.yaml but no job folders yet")
        raise SweepError(f"{str(root)!r} is not a slimkit sweep folder: no multirun.yaml and no job folders "
                         "(folders with .hydra/overrides.yaml, report.json or status.json)")
    return sorted(jobs, key=lambda p: _natural_key(str(p.relative_to(root))))


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _stage_settings(report: Mapping[str, Any] | None, config: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """kind → {backend, config...}: from the report's stage records, else from the job's composed config."""
    out: dict[str, dict[str, Any]] = {}
    for stage in (report or {}).get("stages") or []:
        if isinstance(stage, Mapping) and stage.get("kind"):
            out[stage["kind"]] = {"backend": stage.get("backend"), **(stage.get("config") or {})}
    if config:
        for kind in KINDS:
            node = config.get(kind)
            if kind not in out and isinstance(node, Mapping) and node.get("backend"):
                out[kind] = dict(node)
    return out


def load_job(job_dir: Path, root: Path, sweep: Mapping[str, Any]) -> Job:
    """Read one job folder into a :class:`Job` (never raises: problems become the row's status)."""
    name = str(job_dir.relative_to(root)) if job_dir != root else job_dir.name
    status_data = read_json(job_dir / STATUS_FILE) or {}
    overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml")
    if not isinstance(overrides, list):
        overrides = list(status_data.get("overrides") or [])
    config = _read_yaml(job_dir / ".hydra" / "config.yaml")
    report: dict[str, Any] | None = None
    error = ""
    report_path = job_dir / REPORT_FILE
    if report_path.exists():
        report = read_json(report_path)
        if report is None or not isinstance(report.get("final"), Mapping) or not isinstance(report.get("baseline"), Mapping):
            error = f"{REPORT_FILE} is unreadable or lacks baseline/final metrics"
            report = None
    status = status_data.get("status")
    if status == "failed":
        error = str(status_data.get("error", "failed (no error text)"))
        report = None
    elif report is not None:
        status = "ok"
    elif error:
        status = "corrupt"
    elif status == "running":
        error = "started but not finished (still running, or killed)"
    else:
        status, error = "missing", f"no {REPORT_FILE}: the job did not finish (still running, or killed)"
    stages = _stage_settings(report, config if isinstance(config, Mapping) else None)
    job = Job(job=name, status=status, overrides=[str(o) for o in overrides],
              backends={k: (stages.get(k) or {}).get("backend") for k in KINDS},
              sparsity=(stages.get("pruner") or {}).get("sparsity"), bits=(stages.get("quantizer") or {}).get("bits"),
              error=error)
    if report is not None:
        base, final, ratios = report["baseline"], report["final"], report.get("ratios") or {}
        job.model = (report.get("model") or {}).get("name")
        job.baseline = {k: base.get(k) for k in ("perplexity", "size_bytes", "decode_tokens_per_s") if k in base}
        job.perplexity = final.get("perplexity")
        job.quality = quality(report, sweep)
        job.accuracy = {name: t["final"] for name, t in (report.get("tasks") or {}).items() if t.get("final") is not None}
        job.size_mb = final["size_bytes"] / 1e6 if final.get("size_bytes") else None
        job.size_ratio, job.speed_ratio = ratios.get("size"), ratios.get("speed")
        job.prefill_ratio = ratios.get("prefill_speed")
        job.achieved_sparsity, job.bits_per_weight = final.get("achieved_sparsity"), final.get("bits_per_weight")
        timing = report.get("timing") or {}
        if timing.get("condition"):
            job.timing = f"{timing['condition']} x{timing.get('processes', 0)}" if timing.get("processes") else timing["condition"]
        job.deployments = [_deployment_row(d) for d in report.get("deployments") or [] if isinstance(d, Mapping)]
        floor = float(sweep.get("min_quality", 0.97))
        job.feasible = None if job.quality is None else job.quality >= floor
        try:
            job.objective = objective(report, sweep)
        except SlimkitError:
            job.objective = None
    return job


def _deployment_row(entry: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("exporter", "runtime", "format", "size_bytes", "perplexity", "perplexity_ratio", "prefill_speedup", "decode_speedup")
    row = {k: entry.get(k) for k in keys}
    row["tasks"] = {t: (v or {}).get("final") for t, v in (entry.get("tasks") or {}).items()}
    return row


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[str]) -> bool:
    """True if point ``a`` is at least as good as ``b`` on every axis and better on one."""
    better = [(x < y) if s == "min" else (x > y) for x, y, s in zip(a, b, senses)]
    worse = [(x > y) if s == "min" else (x < y) for x, y, s in zip(a, b, senses)]
    return any(better) and not any(worse)


def pareto_front(points: Sequence[Sequence[float]], senses: Sequence[str] = ("min", "max")) -> list[int]:
    """Indices of the non-dominated points; ``senses`` says per axis whether lower ("min") or
    higher ("max") is better. Equal points are all kept."""
    for sense in senses:
        if sense not in ("min", "max"):
            raise ConfigError("senses", sense, "'min' or 'max' per axis")
    return [i for i, p in enumerate(points) if not any(dominates(q, p, senses) for j, q in enumerate(points) if j != i)]


@dataclasses.dataclass
class SweepResult:
    """All jobs of a sweep with their frontiers and the best feasible configuration."""

    sweep_dir: Path
    jobs: list[Job]
    min_quality: float
    objective_name: str
    baselines: dict[str, dict[str, Any]]
    optimization: Any = None
    #: what quality measures: ``perplexity`` or ``task:<name>`` (sweep.quality)
    quality_name: str = "perplexity"

    @property
    def tasks(self) -> list[str]:
        """Task names scored by any job, in first-seen order (one sweep-table column each)."""
        return list(dict.fromkeys(name for j in self.jobs for name in j.accuracy))

    @property
    def ok(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "ok"]

    def frontier(self, axis: str) -> list[Job]:
        """Jobs on the size–quality (``size``) or speed–quality (``speed``) Pareto frontier."""
        flag = "pareto_size" if axis == "size" else "pareto_speed"
        return [j for j in self.jobs if getattr(j, flag)]

    @property
    def best_feasible(self) -> Job | None:
        """The feasible job with the lowest objective (smallest artifact for ``size``)."""
        feasible = [j for j in self.ok if j.feasible and j.objective is not None]
        return min(feasible, key=lambda j: (j.objective, j.job)) if feasible else None

    def as_dict(self) -> dict[str, Any]:
        best = self.best_feasible
        return {"sweep_dir": str(self.sweep_dir), "min_quality": self.min_quality, "objective": self.objective_name,
                "quality": self.quality_name,
                "baselines": self.baselines, "jobs": [j.as_dict() for j in self.jobs],
                "frontier": {"size": [j.job for j in self.frontier("size")],
                             "speed": [j.job for j in self.frontier("speed")]},
                "best_feasible": best.job if best else None, "optimization": self.optimization}


def _sweep_defaults(root: Path) -> dict[str, Any]:
    """The ``sweep`` node of the sweep's composed config (multirun.yaml), if any."""
    config = _read_yaml(root / "multirun.yaml")
    node = config.get("sweep") if isinstance(config, Mapping) else None
    return dict(node) if isinstance(node, Mapping) else {}


def _set_labels(jobs: list[Job]) -> None:
    """Label each job by the overrides whose values differ across the sweep (``sparsity=0.5 bits=4``)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for o in job.overrides:
            values.setdefault(override_key(o), set()).add(o)
    present = {k: sum(any(override_key(o) == k for o in j.overrides) for j in jobs) for k in values}
    varying = {k for k, v in values.items() if len(v) > 1 or present[k] < len(jobs)}
    for job in jobs:
        short = []
        for o in job.overrides:
            key = override_key(o)
            if key in varying:
                short.append(f"{key.split('.')[-1]}={o.split('=', 1)[1]}" if "=" in o else o)
        job.label = " ".join(short) or job.job


def collect(sweep_dir: str | Path, min_quality: float | None = None, objective_name: str | None = None) -> SweepResult:
    """Read every job of a sweep into a :class:`SweepResult` (missing/corrupt reports become rows
    with that status) and mark the Pareto frontiers among completed jobs."""
    root = Path(sweep_dir)
    jobs_dirs = find_jobs(root)
    sweep = _sweep_defaults(root)
    if min_quality is not None:
        sweep["min_quality"] = min_quality
    if objective_name is not None:
        sweep["objective"] = objective_name
    sweep.setdefault("min_quality", 0.97)
    sweep.setdefault("objective", "size")
    check_sweep_settings(sweep)
    jobs = [load_job(d, root, sweep) for d in jobs_dirs]
    for axis, flag, senses in (("size_mb", "pareto_size", ("min", "max")),
                               ("speed_ratio", "pareto_speed", ("max", "max"))):
        scored = [j for j in jobs if j.status == "ok" and getattr(j, axis) is not None and j.quality is not None]
        for i in pareto_front([(getattr(j, axis), j.quality) for j in scored], senses):
            setattr(scored[i], flag, True)
    _set_labels(jobs)
    baselines: dict[str, dict[str, Any]] = {}
    for job in jobs:
        if job.status == "ok" and job.baseline:
            baselines.setdefault(job.model or "model", job.baseline)
    optimization = _read_yaml(root / "optimization_results.yaml") if (root / "optimization_results.yaml").exists() else None
    return SweepResult(root, jobs, float(sweep["min_quality"]), str(sweep["objective"]), baselines, optimization,
                       str(sweep.get("quality") or "perplexity"))


