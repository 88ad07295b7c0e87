"""The sweep job: record failures instead of killing the sweep, skip complete jobs, return the objective."""

from __future__ import annotations

import gc
import json
import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from omegaconf import OmegaConf

from slimkit.core.artifact import atomic_write_text
from slimkit.core.errors import ArtifactError, SlimkitError
from slimkit.pipeline.baseline import baseline_cache_dir
from slimkit.sweeps.naming import OBJECTIVES, REPORT_FILE, STATUS_FILE, override_key

log = logging.getLogger("slimkit.sweeps")

def _sweep_settings(cfg: Any) -> dict[str, Any]:
    node = cfg.get("sweep") if hasattr(cfg, "get") else None
    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def quality_task(sweep: Mapping[str, Any] | None) -> str | None:
    """The task ``sweep.quality=task:<name>`` names, or None for ``perplexity``."""
    measure = str((sweep or {}).get("quality") or "perplexity")
    return measure.split(":", 1)[1] if measure.startswith("task:") else None


def _task_names(tasks: Iterable[str]) -> tuple[set[str], bool]:
    """Names ``eval.tasks`` entries give their tasks (YAML: file stem and its ``task:``), and whether an
    lm-eval task/group name is among them (its leaf names are known only once it loads)."""
    from slimkit.evaluation.tasks import BUILTIN

    names, opaque = set(), False
    for spec in tasks:
        spec = str(spec)
        names.add(spec)
        if spec.endswith((".yaml", ".yml")):
            names.add(Path(spec).stem)
            try:
                from lm_eval.tasks._yaml_loader import load_yaml

                task = load_yaml(Path(spec).expanduser(), resolve_func=False, recursive=True).get("task")
                names.update([task] if isinstance(task, str) else [])
            except Exception:  # an unreadable YAML is reported by the run itself
                pass
        elif spec not in BUILTIN:
            opaque = True
    return names, opaque


def check_sweep_settings(sweep: Mapping[str, Any], eval_tasks: Iterable[str] | None = None) -> None:
    """Validate the ``sweep`` config node (objective name, quality measure and floor); with the run's
    ``eval.tasks``, also that ``sweep.quality=task:<name>`` names one of them."""
    from slimkit.core.errors import ConfigError
    from slimkit.core.plugin import check_choice, check_range

    check_choice("sweep.objective", sweep.get("objective", "size"), OBJECTIVES)
    check_range("sweep.min_quality", sweep.get("min_quality", 0.97), 0.0, 1.0, low_open=True)
    measure = str(sweep.get("quality") or "perplexity")
    task = quality_task(sweep)
    if measure != "perplexity" and not task:
        raise ConfigError("sweep.quality", measure, "'perplexity' or 'task:<name>' with <name> one of eval.tasks")
    if task and eval_tasks is not None:
        names, opaque = _task_names(eval_tasks)
        if task not in names and not opaque:
            raise ConfigError("sweep.quality", measure, "'perplexity' or 'task:<name>' with <name> one of eval.tasks "
                              f"{sorted(names)}", f"{task!r} is not evaluated; add it to eval.tasks")


def quality(report: Mapping[str, Any], sweep: Mapping[str, Any] | None = None) -> float | None:
    """The job's quality (1.0 = unchanged, higher is better), or None: by default (``sweep.quality=perplexity``)
    baseline perplexity / final perplexity; with ``sweep.quality=task:<name>`` the fraction of the task's
    baseline score the final model retains (``report.json``'s ``tasks.<name>.retained``)."""
    task = quality_task(sweep)
    if task is not None:
        record = (report.get("tasks") or {}).get(task) or {}
        return record.get("retained")
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
    q = quality(report, sweep)
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
    keep = [o for o in overrides if not any(override_key(o) == k or override_key(o).startswith(k + ".")
                                            for k in NOT_IDENTITY)]
    return sorted(keep)


def write_status(job_dir: Path, status: str, **fields: Any) -> None:
    """Write the job's ``status.json`` (``running``/``ok``/``failed``) atomically."""
    atomic_write_text(Path(job_dir) / STATUS_FILE, json.dumps({"status": status, **fields}, indent=2, default=str))


def sweep_job(cfg: Any, output_dir: str | Path, runner: Callable[..., dict[str, Any]] | None = None) -> float | None:
    """Run one job of a multirun: skip it if complete, record a failure instead of raising, free
    the model afterwards, and return the objective for an optimising sweeper (None if it failed,
    which Optuna records as a failed trial)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    if runner is None:
        from slimkit.pipeline import run as runner
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
        check_sweep_settings(sweep, (cfg.get("eval") or {}).get("tasks"))
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


