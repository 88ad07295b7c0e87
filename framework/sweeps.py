"""Sweeps that answer questions: fault-tolerant sweep jobs, a baseline evaluated once per sweep,
pre-launch validation of every combination, and one aggregated report with Pareto frontiers.

    slimkit -m experiment=tiny pruner.sparsity=0,0.5 quantizer.bits=4,8 hydra.sweep.dir=sweeps/a
    slimkit report sweeps/a                  # table (md/csv/json), Pareto PNGs, sweep.html
    slimkit -m +sweep=optuna_size            # Optuna: smallest artifact with quality >= 97%
    slimkit -m +sweep=ray pruner.sparsity=0,0.5        # same sweep on a Ray cluster
    slimkit -m +sweep=submitit_local pruner.sparsity=0,0.5   # or through submitit (SLURM: +sweep=slurm)
    slimkit -m '+sweep=[optuna_size,ray]' hydra.sweeper.n_jobs=4  # presets combine: 4 trials at a time on Ray

Quality is ``baseline perplexity / perplexity`` (1.0 = unchanged); a configuration is *feasible*
when its quality is at least ``sweep.min_quality``. Each job's folder is named after its overrides,
so re-running a sweep finds the jobs already complete and skips them (``sweep.redo=true`` re-runs).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import csv
import dataclasses
import gc
import hashlib
import html
import io
import itertools
import json
import logging
import math
import os
import re
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from omegaconf import OmegaConf

from .errors import ArtifactError, ConfigError, SlimkitError

log = logging.getLogger("slimkit.sweeps")

STATUS_FILE = "status.json"
REPORT_FILE = "report.json"
#: files written into the sweep folder by :func:`write_sweep_report`
OUTPUTS = {"markdown": "sweep.md", "csv": "sweep.csv", "json": "sweep.json", "html": "sweep.html",
           "size_plot": "pareto_size.png", "speed_plot": "pareto_speed.png"}
OBJECTIVES = ("size", "latency", "perplexity")
KINDS = ("pruner", "distiller", "quantizer")
#: overrides shown in their own columns rather than under "other overrides"
COLUMN_KEYS = {"pruner", "distiller", "quantizer", "pruner.sparsity", "quantizer.bits"}


class SweepError(ArtifactError):
    """A sweep folder cannot be read as a sweep, or a sweep cannot be launched as configured."""


# --------------------------------------------------------------------------------------------
# job folders named after their overrides (so the same overrides find the same folder again)
# --------------------------------------------------------------------------------------------

def job_dirname(override_dirname: str) -> str:
    """A safe, stable folder name for a job's overrides (Hydra's ``override_dirname``).

    Short names stay readable (``pruner.sparsity=0.5,quantizer.bits=4``); path separators are
    replaced and long names are cut and suffixed with a hash of the full text."""
    text = str(override_dirname or "") or "default"
    safe = re.sub(r"[^A-Za-z0-9_.=,+\-\[\]]", "_", text)
    if len(safe) > 120 or safe in {".", ".."}:
        safe = safe[:80] + "-" + hashlib.sha1(text.encode()).hexdigest()[:12]
    return safe


if not OmegaConf.has_resolver("slimkit_jobdir"):
    OmegaConf.register_new_resolver("slimkit_jobdir", job_dirname)


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode is RunMode.MULTIRUN
    except Exception:  # pragma: no cover - no Hydra context
        return False


# --------------------------------------------------------------------------------------------
# the baseline, evaluated once per sweep
# --------------------------------------------------------------------------------------------

def _fingerprint(path: str | None) -> list[Any]:
    """Names, sizes and mtimes of a local model folder, so an edited model misses the cache."""
    if not path or not Path(path).is_dir():
        return []
    return sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(path).iterdir() if p.is_file())


def baseline_key(settings: Mapping[str, Any]) -> str:
    """Hash of everything the baseline's quality and size depend on: model, data, eval config,
    seed (random-init test models), torch and transformers versions."""
    import torch
    import transformers

    model = dict(settings.get("model") or {})
    parts = {"model": model, "model_files": _fingerprint(model.get("path")), "data": settings.get("data"),
             "eval": settings.get("eval"), "seed": settings.get("seed", 0), "torch": torch.__version__,
             "transformers": transformers.__version__}
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def baseline_cache_dir(settings: Mapping[str, Any]) -> Path | None:
    """Where baseline metrics are cached: ``sweep.baseline_cache`` (a folder), or ``auto`` = the
    sweep folder's ``.slimkit/`` during a multirun and no cache for single runs; ``off`` disables."""
    value = (settings.get("sweep") or {}).get("baseline_cache", "auto")
    if value in (None, False, "off", "none", "null"):
        return None
    if value == "auto":
        if not _is_multirun():
            return None
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().sweep.dir) / ".slimkit"
    return Path(str(value))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (jobs of a parallel launcher computing the same baseline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except (ImportError, OSError):  # pragma: no cover - no flock on this platform/filesystem
            pass
        yield


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def cached_baseline(settings: Mapping[str, Any], compute: Callable[[], dict[str, Any]],
                    part: str = "quality") -> dict[str, Any]:
    """Baseline metrics ``compute()`` once per sweep: the first job computes and stores them under
    a hash of (model, data, eval config, seed, versions), every later job with the same key reuses
    them. ``part`` separates independently cached pieces (``quality``, ``tasks``...). Without a
    cache location (single runs by default) this is just ``compute()``."""
    location = baseline_cache_dir(settings)
    if location is None:
        return compute()
    key = baseline_key(settings)
    path = location / f"baseline-{part}-{key}.json"
    with _file_lock(path.with_suffix(".lock")):
        if path.is_file():
            try:
                values = json.loads(path.read_text())["metrics"]
                log.info("baseline %s metrics reused from %s", part, path)
                return dict(values)
            except (ValueError, KeyError, TypeError):
                log.warning("baseline cache %s is unreadable; recomputing it", path)
        values = compute()
        _atomic_write(path, json.dumps({"key": key, "part": part, "model": settings.get("model"),
                                        "metrics": values}, indent=2, default=str))
        return dict(values)


# --------------------------------------------------------------------------------------------
# the job: record failures instead of killing the sweep, skip complete jobs, return the objective
# --------------------------------------------------------------------------------------------

def _sweep_settings(cfg: Any) -> dict[str, Any]:
    node = cfg.get("sweep") if hasattr(cfg, "get") else None
    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def check_sweep_settings(sweep: Mapping[str, Any]) -> None:
    """Validate the ``sweep`` config node (objective name, quality floor)."""
    from .plugin import check_choice, check_range

    check_choice("sweep.objective", sweep.get("objective", "size"), OBJECTIVES)
    check_range("sweep.min_quality", sweep.get("min_quality", 0.97), 0.0, 1.0, low_open=True)


def quality(report: Mapping[str, Any]) -> float | None:
    """Baseline perplexity / final perplexity (1.0 = unchanged, higher is better), or None."""
    base = (report.get("baseline") or {}).get("perplexity")
    final = (report.get("final") or {}).get("perplexity")
    if not base or final is None:
        return None
    if not math.isfinite(final) or final <= 0:
        return 0.0
    return base / final


def objective(report: Mapping[str, Any], sweep: Mapping[str, Any] | None = None) -> float:
    """The value a job returns to an optimising sweeper (minimised).

    ``size``: final artifact MB; ``latency``: ms per decoded token. Both are constrained by
    ``sweep.min_quality``: an infeasible job scores ``baseline value × (1 + violation)`` with
    ``violation = min_quality / quality - 1``, so it is always worse than the uncompressed model
    and less bad the closer it gets to the floor. ``perplexity``: the final perplexity, unconstrained."""
    sweep = dict(sweep or {})
    check_sweep_settings(sweep)
    name = sweep.get("objective", "size")
    base, final = report.get("baseline") or {}, report.get("final") or {}
    if name == "perplexity":
        value = final.get("perplexity")
        return float(value) if value is not None and math.isfinite(value) else float("inf")
    if name == "size":
        value, reference = final.get("size_bytes"), base.get("size_bytes")
        value, reference = (v / 1e6 if v else None for v in (value, reference))
    else:
        value, reference = (1000.0 / m["decode_tokens_per_s"] if m.get("decode_tokens_per_s") else None
                            for m in (final, base))
    if value is None:
        raise ArtifactError(f"report has no metric for sweep.objective={name!r} (was it measured? eval.latency)")
    q = quality(report)
    floor = float(sweep.get("min_quality", 0.97))
    if q is None or q >= floor:
        return float(value)
    violation = min(floor / q - 1.0, 1e6) if q > 0 else 1e6
    return float((reference or value) * (1.0 + violation))


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None if it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def completed_report(job_dir: Path, overrides: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The job's report if the job finished (status ok and a readable report.json with final
    metrics) and, when given, was run with the same overrides; else None."""
    status = read_json(job_dir / STATUS_FILE)
    report = read_json(job_dir / REPORT_FILE)
    if not status or status.get("status") != "ok" or not report or "final" not in report:
        return None
    if overrides is not None and identity(status.get("overrides", [])) != identity(overrides):
        return None
    return report


#: override keys that do not change a job's result (the launcher/search preset, the objective...)
NOT_IDENTITY = ("sweep", "output.overwrite")


def identity(overrides: Iterable[str]) -> list[str]:
    """The overrides that define a job's result, sorted (same as its folder name leaves out)."""
    keep = [o for o in overrides if not any(_override_key(o) == k or _override_key(o).startswith(k + ".")
                                            for k in NOT_IDENTITY)]
    return sorted(keep)


def write_status(job_dir: Path, status: str, **fields: Any) -> None:
    """Write the job's ``status.json`` (``running``/``ok``/``failed``) atomically."""
    _atomic_write(Path(job_dir) / STATUS_FILE, json.dumps({"status": status, **fields}, indent=2, default=str))


def sweep_job(cfg: Any, output_dir: str | Path, runner: Callable[..., dict[str, Any]] | None = None) -> float | None:
    """Run one job of a multirun: skip it if complete, record a failure instead of raising, free
    the model afterwards, and return the objective for an optimising sweeper (None if it failed,
    which Optuna records as a failed trial)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    if runner is None:
        from .pipeline import run as runner
    job_dir = Path(output_dir)
    overrides = list(HydraConfig.get().overrides.task)
    sweep = _sweep_settings(cfg)
    done = completed_report(job_dir, overrides)
    if done is not None and not sweep.get("redo", False):
        log.info("job %s is complete; skipping it (sweep.redo=true re-runs it)", job_dir.name)
        try:
            return objective(done, sweep)
        except SlimkitError:
            return None
    start = time.time()
    write_status(job_dir, "running", overrides=overrides, started=start)
    try:
        check_sweep_settings(sweep)
        with open_dict(cfg):
            if cfg.get("output") is None:
                cfg.output = {}
            if not cfg.output.get("model_dir") and (job_dir / "model").exists():
                cfg.output.overwrite = True  # our own job folder: a redo, or a retry after a failure
            if cfg.get("sweep") is None:
                cfg.sweep = {}
            cache = baseline_cache_dir(OmegaConf.to_container(cfg, resolve=False))
            cfg.sweep.baseline_cache = str(cache) if cache else "off"
        report = runner(cfg, job_dir)
        value = objective(report, sweep)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a failing job must not kill the sweep (SystemExit included)
        error = f"{type(exc).__name__}: {exc}"
        log.error("job %s failed: %s", job_dir.name, error)
        write_status(job_dir, "failed", overrides=overrides, error=error, traceback=traceback.format_exc(),
                     seconds=round(time.time() - start, 2))
        return None
    finally:
        report = None  # one model per worker: drop every reference before the next job
        gc.collect()
    write_status(job_dir, "ok", overrides=overrides, objective=value, seconds=round(time.time() - start, 2))
    return value


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Job:
    """One row of the sweep table."""

    job: str
    status: str  # ok | failed | missing | corrupt | running
    overrides: list[str]
    backends: dict[str, str | None]
    sparsity: float | None = None
    bits: Any = None
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

    @property
    def other_overrides(self) -> list[str]:
        return [o for o in self.config_overrides if _override_key(o) not in COLUMN_KEYS]

    @property
    def config_overrides(self) -> list[str]:
        """The overrides that define the job's result (not the launcher/search preset or objective)."""
        keep = set(identity(self.overrides))
        return [o for o in self.overrides if o in keep]

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["other_overrides"] = self.other_overrides
        return data


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


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
        job.quality = quality(report)
        job.accuracy = {k: v for k, v in final.items() if k.endswith("accuracy") and isinstance(v, (int, float))}
        job.size_mb = final["size_bytes"] / 1e6 if final.get("size_bytes") else None
        job.size_ratio, job.speed_ratio = ratios.get("size"), ratios.get("speed")
        job.prefill_ratio = ratios.get("prefill_speed")
        floor = float(sweep.get("min_quality", 0.97))
        job.feasible = None if job.quality is None else job.quality >= floor
        try:
            job.objective = objective(report, sweep)
        except SlimkitError:
            job.objective = None
    return job


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
            values.setdefault(_override_key(o), set()).add(o)
    present = {k: sum(any(_override_key(o) == k for o in j.overrides) for j in jobs) for k in values}
    varying = {k for k, v in values.items() if len(v) > 1 or present[k] < len(jobs)}
    for job in jobs:
        short = []
        for o in job.overrides:
            key = _override_key(o)
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
    return SweepResult(root, jobs, float(sweep["min_quality"]), str(sweep["objective"]), baselines, optimization)


# --------------------------------------------------------------------------------------------
# rendering: markdown, CSV, JSON, plots, HTML
# --------------------------------------------------------------------------------------------

HEADERS = ["job", "status", "pruner", "sparsity", "distiller", "quantizer", "bits", "other overrides", "perplexity",
           "quality %", "accuracy", "size MB", "size ×", "decode ×", "prefill ×", "feasible", "frontier", "objective",
           "error"]


def _fmt(value: Any, spec: str = "{:.3g}") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return spec.format(value)
    return str(value)


def table_rows(result: SweepResult) -> list[list[str]]:
    """The sweep table as rows of strings (same columns as :data:`HEADERS`)."""
    rows = []
    for j in result.jobs:
        frontier = "/".join(n for n, on in (("size", j.pareto_size), ("speed", j.pareto_speed)) if on)
        rows.append([
            j.job, j.status, _fmt(j.backends.get("pruner")), _fmt(j.sparsity), _fmt(j.backends.get("distiller")),
            _fmt(j.backends.get("quantizer")), _fmt(j.bits), " ".join(j.other_overrides) or "–",
            _fmt(j.perplexity, "{:.2f}"), _fmt(None if j.quality is None else 100 * j.quality, "{:.1f}"),
            ", ".join(f"{k} {v:.3f}" for k, v in j.accuracy.items()) or "–", _fmt(j.size_mb, "{:.3f}"),
            _fmt(j.size_ratio, "{:.2f}"), _fmt(j.speed_ratio, "{:.2f}"), _fmt(j.prefill_ratio, "{:.2f}"),
            _fmt(j.feasible), frontier or "–", _fmt(j.objective, "{:.4g}"), (j.error or "").splitlines()[0][:200] if j.error else "",
        ])
    return rows


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: SweepResult) -> str:
    """The sweep as a markdown page: summary, best feasible configuration, frontier, table."""
    lines = [f"# slimkit sweep: {result.sweep_dir}", "", *summary_lines(result), "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in table_rows(result)]
    return "\n".join(lines) + "\n"


def _describe(job: Job) -> str:
    if job.config_overrides:
        text = " ".join(job.config_overrides)
    else:
        parts = [f"{k}={v}" for k, v in job.backends.items() if v]
        parts += [f"sparsity={job.sparsity}"] if job.sparsity is not None else []
        parts += [f"bits={job.bits}"] if job.bits is not None else []
        text = " ".join(parts)
    metrics = [f"ppl {job.perplexity:.2f}" if job.perplexity is not None else None,
               f"quality {100 * job.quality:.1f}%" if job.quality is not None else None,
               f"{job.size_mb:.3f} MB" if job.size_mb is not None else None,
               f"decode ×{job.speed_ratio:.2f}" if job.speed_ratio is not None else None]
    return f"{text} ({', '.join(m for m in metrics if m)})"


def summary_lines(result: SweepResult) -> list[str]:
    """Counts, baseline, best feasible configuration and the two frontiers, as markdown bullets."""
    counts: dict[str, int] = {}
    for j in result.jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    lines = [f"- jobs: {len(result.jobs)} (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")"]
    for model, base in result.baselines.items():
        size = base.get("size_bytes")
        lines.append(f"- baseline ({model}, fp32): perplexity {_fmt(base.get('perplexity'), '{:.2f}')}, "
                     f"{_fmt(size / 1e6 if size else None, '{:.3f}')} MB")
    floor = result.min_quality
    lines.append(f"- constraint: quality = baseline perplexity / perplexity ≥ {floor:.2f} "
                 f"(perplexity ≤ baseline/{floor:g}); objective: minimise {result.objective_name}")
    best = result.best_feasible
    lines.append("- best feasible: " + (_describe(best) if best else "none (no completed job meets the constraint)"))
    for axis, label in (("size", "size–quality"), ("speed", "speed–quality")):
        front = result.frontier(axis)
        lines.append(f"- {label} frontier: " + ("; ".join(_describe(j) for j in front) if front else "–"))
    if isinstance(result.optimization, Mapping) and result.optimization.get("best_params") is not None:
        lines.append(f"- optuna best (penalised objective {result.optimization.get('best_value')}): "
                     f"{result.optimization.get('best_params')}")
    failed = [j for j in result.jobs if j.status != "ok"]
    for j in failed:
        lines.append(f"- {j.status}: {j.job}: {(j.error or '').splitlines()[0] if j.error else ''}")
    return lines


def write_csv(result: SweepResult, path: Path) -> None:
    """One CSV row per job with raw numbers (not formatted)."""
    fields = ["job", "status", "pruner", "sparsity", "distiller", "quantizer", "bits", "other_overrides",
              "perplexity", "quality", "accuracy", "size_mb", "size_ratio", "speed_ratio", "prefill_ratio",
              "feasible", "pareto_size", "pareto_speed", "objective", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for j in result.jobs:
        row = j.as_dict()
        writer.writerow({**{k: row.get(k) for k in fields}, **{k: j.backends.get(k) for k in KINDS},
                         "other_overrides": " ".join(j.other_overrides), "accuracy": json.dumps(j.accuracy) if j.accuracy else "",
                         "error": (j.error or "").splitlines()[0] if j.error else ""})
    _atomic_write(path, buffer.getvalue())


def plot_pareto(result: SweepResult, axis: str, path: Path) -> None:
    """Quality (% of baseline) against size (MB) or decode speed (× baseline): every completed job,
    the frontier joined and ringed, the baseline as a star and the quality floor dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    attr, flag = ("size_mb", "pareto_size") if axis == "size" else ("speed_ratio", "pareto_speed")
    xlabel = "artifact size (MB)" if axis == "size" else "decode speed (× baseline, same process, alternating)"
    fig = Figure(figsize=(7.5, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    points = [j for j in result.ok if getattr(j, attr) is not None and j.quality is not None]
    for feasible, colour, label in ((True, "tab:green", "feasible"), (False, "tab:red", "below the quality floor")):
        chosen = [j for j in points if bool(j.feasible) == feasible]
        if chosen:
            ax.scatter([getattr(j, attr) for j in chosen], [100 * j.quality for j in chosen], c=colour, s=36,
                       label=label, zorder=3)
    front = sorted((j for j in points if getattr(j, flag)), key=lambda j: getattr(j, attr))
    if front:
        ax.plot([getattr(j, attr) for j in front], [100 * j.quality for j in front], "-", color="black", lw=1.2,
                drawstyle="steps-post" if axis == "size" else "steps-pre", zorder=2, label="Pareto frontier")
        ax.scatter([getattr(j, attr) for j in front], [100 * j.quality for j in front], s=140, facecolors="none",
                   edgecolors="black", linewidths=1.4, zorder=4)
    for j in points:
        ax.annotate(j.label if len(j.label) <= 40 else j.label[:38] + "…", (getattr(j, attr), 100 * j.quality),
                    fontsize=6, xytext=(4, 3), textcoords="offset points")
    for model, base in result.baselines.items():
        bx = (base.get("size_bytes") or 0) / 1e6 if axis == "size" else 1.0
        if axis == "size" and not base.get("size_bytes"):
            continue
        ax.scatter([bx], [100.0], marker="*", s=220, c="tab:blue", zorder=5, label=f"baseline {model} (fp32)")
    ax.axhline(100 * result.min_quality, color="tab:gray", ls="--", lw=1,
               label=f"quality floor {100 * result.min_quality:.0f}%")
    if axis == "speed":
        ax.axvline(1.0, color="tab:blue", ls=":", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("quality (% of baseline: baseline ppl / ppl)")
    ax.set_title(f"{'size' if axis == 'size' else 'speed'} vs quality — {len(points)} completed job(s)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def render_html(result: SweepResult, plots: Mapping[str, Path]) -> str:
    """One self-contained page: summary, both plots embedded as base64 PNG, the table."""
    esc = html.escape
    images = "".join(
        f'<figure><img alt="{esc(name)} Pareto plot" src="data:image/png;base64,'
        f'{base64.b64encode(Path(p).read_bytes()).decode()}"><figcaption>{esc(name)} vs quality</figcaption></figure>'
        for name, p in plots.items())
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADERS)
    body = ""
    for job, row in zip(result.jobs, table_rows(result)):
        css = job.status + (" frontier" if job.pareto_size or job.pareto_speed else "")
        body += f'<tr class="{css}">' + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>\n"
    summary = "".join(f"<li>{esc(line[2:])}</li>" for line in summary_lines(result))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>slimkit sweep: {esc(str(result.sweep_dir))}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f0f0f0; }}
tr.failed, tr.missing, tr.corrupt, tr.running {{ background: #fde8e8; }}
tr.frontier td:first-child {{ font-weight: bold; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }}
img {{ max-width: 640px; border: 1px solid #ddd; }}
td:first-child {{ max-width: 22em; word-break: break-all; }}
</style></head>
<body>
<h1>slimkit sweep</h1>
<p><code>{esc(str(result.sweep_dir))}</code></p>
<ul>{summary}</ul>
<p id="plot-check">plots not rendered (needs a browser that runs the page's script)</p>
{images}
<h2>Jobs</h2>
<table id="jobs"><thead><tr>{head}</tr></thead><tbody>
{body}</tbody></table>
<script>
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.getElementById("plot-check").textContent = ok + "/" + imgs.length + " plots rendered";
}});
</script>
</body></html>
"""


def write_sweep_report(sweep_dir: str | Path, min_quality: float | None = None,
                       objective_name: str | None = None) -> tuple[SweepResult, dict[str, Path]]:
    """Aggregate a sweep folder and write sweep.md, sweep.csv, sweep.json, the two Pareto PNGs and
    sweep.html into it. Returns the result and the written paths."""
    result = collect(sweep_dir, min_quality, objective_name)
    root = result.sweep_dir
    paths = {k: root / v for k, v in OUTPUTS.items()}
    _atomic_write(paths["markdown"], render_markdown(result))
    write_csv(result, paths["csv"])
    _atomic_write(paths["json"], json.dumps(result.as_dict(), indent=2, default=str))
    plot_pareto(result, "size", paths["size_plot"])
    plot_pareto(result, "speed", paths["speed_plot"])
    _atomic_write(paths["html"], render_html(result, {"size": paths["size_plot"], "speed": paths["speed_plot"]}))
    return result, paths


# --------------------------------------------------------------------------------------------
# Hydra callback and the `slimkit report` command
# --------------------------------------------------------------------------------------------

try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[assignment,misc]


class SweepReportCallback(_Callback):  # type: ignore[misc,valid-type]
    """Writes the sweep report when a multirun ends (registered in ``conf/config.yaml``)::

        hydra:
          callbacks:
            slimkit_sweep_report:
              _target_: slimkit.sweeps.SweepReportCallback
    """

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            result, paths = write_sweep_report(sweep_dir)
        except SlimkitError as exc:
            log.error("slimkit: sweep report not written: %s", exc)
            return
        print("\n".join(["", f"slimkit sweep report: {paths['html']}", *summary_lines(result)]))


def report_command(argv: Sequence[str]) -> int:
    """``slimkit report <sweep dir> [--min-quality Q] [--objective size|latency|perplexity]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="slimkit report", description="Aggregate a sweep folder: table, Pareto "
                                     "plots and an HTML page; print the best feasible configuration and the frontier.")
    parser.add_argument("sweep_dir")
    parser.add_argument("--min-quality", type=float, default=None,
                        help="quality floor (baseline ppl / ppl); default: the sweep's sweep.min_quality or 0.97")
    parser.add_argument("--objective", choices=OBJECTIVES, default=None)
    args = parser.parse_args(list(argv))
    result, paths = write_sweep_report(args.sweep_dir, args.min_quality, args.objective)
    print(render_markdown(result))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


# --------------------------------------------------------------------------------------------
# pre-launch validation of every combination
# --------------------------------------------------------------------------------------------

#: Hydra flags that take a value
_FLAGS_WITH_VALUE = {"-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--cfg", "-c",
                     "--package", "-p", "--info", "--experimental-rerun"}
#: validate at most this many combinations before launching (each is one config composition)
MAX_VALIDATED = 512


def _is_multirun_argv(argv: Sequence[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in argv) or any(a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in argv)


def _plain_overrides(argv: Sequence[str]) -> list[str] | None:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _FLAGS_WITH_VALUE:
            if arg in ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir"):
                return None  # another config tree: nothing to validate against
            skip = arg not in ("--info",)
            continue
        if arg.startswith("-"):
            continue
        out.append(arg)
    return out


def _values(override: Any) -> list[str]:
    """The values a sweep override takes (an interval contributes its two ends)."""
    if override.is_interval_sweep():
        sweep = override.value()
        return [repr(sweep.start), repr(sweep.end)]
    return list(override.sweep_string_iterator())


def expand_sweep(overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None = None
                 ) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Split command-line overrides into fixed ones and sweep dimensions ``(key, [override, ...])``;
    ``sweeper_params`` (``hydra.sweeper.params`` of a preset) add dimensions the command line does
    not override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    fixed, dims = [], []
    seen = set()
    params = dict(sweeper_params or {})
    prefix = "hydra.sweeper.params."
    for text in overrides:  # hydra.sweeper.params.<key>=... on the command line edits the search space
        key, _, value = text.partition("=")
        if key.startswith(prefix):  # Hydra needs these quoted: hydra.sweeper.params.x='choice(1,2)'
            params[key[len(prefix):]] = value[1:-1] if value[:1] in "'\"" and value[-1:] == value[:1] else value
    for text in overrides:
        if text.startswith(prefix) or _override_key(text).startswith("hydra"):
            continue
        ov = parser.parse_override(text)
        if ov.is_sweep_override():
            key = ov.get_key_element()
            dims.append((key, [f"{key}={v}" for v in _values(ov)]))
            seen.add(key.lstrip("+~"))
        else:
            fixed.append(text)
            seen.add(ov.get_key_element().lstrip("+~"))
    for key, value in params.items():
        if key in seen:
            continue
        ov = parser.parse_override(f"{key}={value}")
        if ov.is_sweep_override():
            dims.append((key, [f"{key}={v}" for v in _values(ov)]))
    return fixed, dims


def validate_sweep(argv: Sequence[str], registry: Any = None) -> int:
    """Before a multirun launches, compose the config of every combination of its sweep values
    (command line and ``hydra.sweeper.params``; an Optuna interval is checked at both ends) and
    resolve its stages (backend names, dependencies, config ranges) without loading a model.

    A sweep value that fails in every combination it appears in raises :class:`SweepError` naming
    it and the underlying error; combinations that fail while their values work elsewhere (say
    ``quantizer.bits=3`` with one of two backends) are logged and will be recorded as failed jobs.
    Returns the number of combinations checked (0 when this is not a multirun)."""
    if not _is_multirun_argv(argv):
        return 0
    overrides = _plain_overrides(argv)
    if overrides is None:
        return 0
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .pipeline import resolve_stages
    from .registry import default_registry

    registry = registry or default_registry()

    def compose_one(items: list[str], hydra_cfg: bool = False) -> Any:
        task = [o for o in items if not _override_key(o).startswith("hydra")]
        hydra_items = [o for o in items if _override_key(o).startswith("hydra")] if hydra_cfg else []
        return compose(config_name="config", overrides=task + hydra_items, return_hydra_config=hydra_cfg)

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    groups = _config_groups()
    composed: dict[tuple[str, ...], Any] = {}

    def structural(item: str) -> bool:  # selects or adds/removes config (groups): needs a composition
        key = parser.parse_override(item).get_key_element()
        return key[:1] in "+~" or "/" in key or key in groups or key.startswith("hydra")

    def check(items: list[str]) -> str | None:
        # one composition per combination of group choices; plain values are set on a copy
        try:
            shape = tuple(o for o in items if structural(o))
            if shape not in composed:
                composed[shape] = compose_one(list(shape))
            cfg = copy.deepcopy(composed[shape])
            for item in items:
                if not structural(item):
                    ov = parser.parse_override(item)
                    OmegaConf.update(cfg, ov.key_or_group, ov.value(), merge=False)
            settings = OmegaConf.to_container(cfg, resolve=True)
            check_sweep_settings(settings.get("sweep") or {})
            resolve_stages(settings, registry)
        except SlimkitError as exc:
            return str(exc)
        except (HydraException, OmegaConfBaseException) as exc:
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
        return None

    with initialize_config_module(config_module="slimkit.conf", version_base="1.3"):
        fixed_only = [o for o in overrides if not o.startswith("hydra.sweeper.params.") and not _parse_is_sweep(o)]
        try:
            base = compose_one(fixed_only, hydra_cfg=True)
            node = base.hydra.sweeper.get("params")
            params = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else {}
        except (HydraException, OmegaConfBaseException) as exc:
            raise SweepError(f"the sweep's fixed overrides do not compose: {exc}".splitlines()[0]) from None
        fixed, dims = expand_sweep(overrides, params)
        combos = list(itertools.islice(itertools.product(*[values for _, values in dims]), MAX_VALIDATED))
        results = [(combo, check(fixed + list(combo))) for combo in combos]
    failures = [(c, e) for c, e in results if e]
    if failures and len(failures) == len(results):
        combo, error = failures[0]
        raise SweepError(f"no combination of this sweep can run, e.g. [{' '.join(combo) or 'no sweep values'}]: {error}")
    for _, values in dims:
        for value in values:
            with_it = [(c, e) for c, e in results if value in c]
            if with_it and all(e for _, e in with_it):
                raise SweepError(f"sweep value {value} fails in every combination it appears in "
                                 f"({len(with_it)}), before any job launched: {with_it[0][1]}")
    for combo, error in failures:
        log.warning("sweep combination [%s] will fail (recorded as a failed job): %s", " ".join(combo), error)
    if len(combos) == MAX_VALIDATED:
        log.warning("validated the first %d combinations of the sweep only", MAX_VALIDATED)
    return len(combos)


def _config_groups() -> set[str]:
    from importlib import resources

    root = resources.files("slimkit.conf")
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")} | set(KINDS)


def _parse_is_sweep(text: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(text).is_sweep_override()


__all__ = ["Job", "SweepError", "SweepReportCallback", "SweepResult", "baseline_key", "cached_baseline", "collect",
           "completed_report", "dominates", "expand_sweep", "find_jobs", "job_dirname", "objective", "pareto_front",
           "quality", "report_command", "sweep_job", "validate_sweep", "write_sweep_report"]
