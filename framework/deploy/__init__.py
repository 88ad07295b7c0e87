"""Deployment: export the final model for the runtimes that serve it, and measure it there.

``slimkit exporter=gguf`` (or ``exporter=[gguf,onnx]``) runs each chosen exporter plugin after the
artifact is saved, writes its files atomically into ``<output>/deploy/<exporter>/``, loads them back
in the runtime and measures them with the PyTorch stages' metrics (perplexity on the eval windows,
task accuracy, size on disk, prefill/decode speed against PyTorch fp32 in fresh processes). The
report's ``deployments`` list holds one entry per export. What the artifact's weights are (float, exactly
dequantizable, integer codes, or kernels only their backend runs) is declared by the stage that wrote it and
read by exporters through :mod:`slimkit.deploy.holdings`, so an exporter carries integer codes into its format
where the format holds them and keeps no list of quantizer names.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Mapping

from slimkit.core import artifact
from slimkit.core.registry import Registry
from slimkit.deploy.plan import PlannedExport, exporter_nodes, resolve_exporters

log = logging.getLogger("slimkit")

__all__ = ["DeployPlan", "PlannedExport", "exporter_nodes", "plan_deployments", "resolve_exporters"]


@dataclasses.dataclass
class DeployPlan:
    """The exporters a run uses, validated before the model loads; :meth:`run` exports and measures."""

    exports: list[PlannedExport]
    settings: Mapping[str, Any]

    def __bool__(self) -> bool:
        return bool(self.exports)

    def run(self, artifact_dir: Path, model: Any, tokenizer: Any, output_dir: Path, eval_windows: Any,
            baseline: Mapping[str, Any], writer: Any = None) -> list[dict[str, Any]]:
        """Export with each exporter, evaluate each export in its runtime; the report's ``deployments``."""
        return [deploy_one(plan, artifact_dir, model, tokenizer, Path(output_dir), eval_windows, baseline,
                           self.settings, writer) for plan in self.exports]


def plan_deployments(settings: Mapping[str, Any], registry: Registry, output_dir: Path | str = ".") -> DeployPlan:
    """Resolve and check the ``exporter`` settings (see :func:`resolve_exporters`); refuse an existing
    ``deploy/<exporter>`` folder unless ``output.overwrite`` is set."""
    from slimkit.core.errors import ArtifactError

    exports = resolve_exporters(settings, registry)
    if not (settings.get("output") or {}).get("overwrite", False):
        for plan in exports:
            target = Path(output_dir) / "deploy" / plan.name
            if target.exists():
                raise ArtifactError(f"exporter={plan.name!r}: {str(target)!r} already exists; refusing to overwrite it "
                                    "(set output.overwrite=true, or choose another output folder)")
    return DeployPlan(exports, settings)


def deploy_one(plan: PlannedExport, artifact_dir: Path, model: Any, tokenizer: Any, output_dir: Path, eval_windows: Any,
               baseline: Mapping[str, Any], settings: Mapping[str, Any], writer: Any = None) -> dict[str, Any]:
    """Export with one exporter into ``<output_dir>/deploy/<name>/`` and measure the export in its runtime."""
    from slimkit.deploy.evaluate import quality
    from slimkit.deploy.serving import serving_speed

    exporter, name = plan.exporter, plan.name
    eval_cfg = settings.get("eval") or {}
    overwrite = bool((settings.get("output") or {}).get("overwrite", False))
    exporter.check_model(model.config, getattr(writer, "name", writer))
    target = output_dir / "deploy" / name
    start = time.perf_counter()
    log.info("exporting with %s", plan.info.describe())
    with artifact.atomic_directory(target, overwrite=overwrite) as tmp:
        facts = dict(exporter.export(Path(artifact_dir), model, tokenizer, tmp) or {})
    export_seconds = time.perf_counter() - start
    threads = int(eval_cfg.get("threads", 1))
    session = type(exporter).open(target, threads=threads)
    entry: dict[str, Any] = {
        "exporter": name,
        "distribution": plan.info.distribution,
        "version": plan.info.version,
        "runtime": getattr(session, "runtime", None) or exporter.runtime,
        "runtime_version": session.runtime_version,
        "format": facts.pop("format", None),
        "weights": exporter.config.weights,
        "path": str(target),
        "size_bytes": artifact.directory_size(target),
        "export_seconds": round(export_seconds, 2),
        **facts,
    }
    windows = eval_windows if eval_cfg.get("perplexity", True) else None
    entry.update(quality(session, windows, tokenizer, list(eval_cfg.get("tasks") or []), eval_cfg.get("task_samples", 200),
                         baseline, int(eval_cfg.get("batch_size", 1)), label=name, task_windows=eval_windows))
    if baseline.get("perplexity") and entry.get("perplexity"):
        entry["perplexity_ratio"] = entry["perplexity"] / baseline["perplexity"]
    if baseline.get("size_bytes"):
        entry["size_ratio"] = baseline["size_bytes"] / entry["size_bytes"]
    del session
    if eval_cfg.get("latency", True):
        prompt = eval_windows[:1, : int(eval_cfg.get("prompt_tokens", 128))]
        speed = serving_speed(name, target, settings.get("model") or {}, int(settings.get("seed", 0)), prompt, eval_cfg)
        entry.update(speed)
    else:
        entry.update({"prefill_speedup": None, "decode_speedup": None, "processes": []})
    return entry
