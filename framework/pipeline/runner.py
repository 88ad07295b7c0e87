"""The pipeline: load → evaluate → apply stages in order (evaluating each) → save atomically →
reload and verify → measure latency against the original → report."""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from slimkit.core import artifact
from slimkit.core.errors import ArtifactError, ConfigError, StageOrderError
from slimkit.core.plugin import STAGE_KINDS, Kind, Stage
from slimkit.core.registry import PluginInfo, Registry, default_registry
from slimkit.core.state import PipelineState
from slimkit.data import build_splits, corpus_from_config
from slimkit.evaluation import latency, model_logits, quality_metrics
from slimkit.evaluation.tasks import TaskSet, task_records
from slimkit.models import load_model
from slimkit.pipeline.config import stage_config
from slimkit.pipeline.report import write_reports

log = logging.getLogger("slimkit")

#: a stage of this kind needs float weights, so it cannot follow a quantizer
NEEDS_FLOAT_WEIGHTS = {Kind.PRUNER, Kind.DISTILLER}


def _as_dict(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def resolve_stages(cfg: Mapping[str, Any], registry: Registry) -> list[tuple[Stage, PluginInfo]]:
    """Check the order, find each chosen backend, check its dependencies and config — all before
    any model is loaded."""
    order = list(cfg.get("pipeline", {}).get("order", [k.value for k in STAGE_KINDS]))
    allowed = [k.value for k in STAGE_KINDS]
    for kind in order:
        if kind not in allowed:
            raise ConfigError("pipeline.order", order, f"a list drawn from {allowed}", f"{kind!r} is not a stage kind")
    if len(set(order)) != len(order):
        raise ConfigError("pipeline.order", order, "each stage kind at most once")
    stages: list[tuple[Stage, PluginInfo]] = []
    quantized_by: str | None = None
    for kind_name in order:
        node = cfg.get(kind_name)
        if node is None:
            continue
        kind = Kind(kind_name)
        if quantized_by and kind in NEEDS_FLOAT_WEIGHTS:
            raise StageOrderError(
                f"pipeline.order={order}: the {kind.value} {node.get('backend')!r} would run after the quantizer "
                f"{quantized_by!r}, but {kind.value}s need float weights and quantized weights cannot be trained or "
                f"pruned exactly. Put the quantizer last, e.g. pipeline.order=[pruner,distiller,quantizer]")
        backend = node.get("backend") if isinstance(node, Mapping) else None
        if not backend:
            raise ConfigError(f"{kind.value}.backend", backend, "the name of an installed backend, e.g. "
                              f"{kind.value}=<name>; see `slimkit plugins`")
        cls = registry.get(kind, backend)
        cls.check_dependencies()
        stage = cls(stage_config(cls, node, kind.value))
        stage.check_before_load(cfg)
        stages.append((stage, registry.info(kind, backend)))
        if kind is Kind.QUANTIZER:
            quantized_by = backend
    return stages


def recovery_hook(stages: list[tuple[Stage, PluginInfo]]):
    """The recovery step pruning schedules call: a configured distiller's ``recover`` if it has one
    (distillation from the original model), else plain next-token fine-tuning."""
    from slimkit.toolkit.training import finetune

    for stage, info in stages:
        if info.kind is Kind.DISTILLER and callable(getattr(stage, "recover", None)):
            return stage.recover
    return finetune


def stage_record(info: PluginInfo, stage: Stage) -> dict[str, Any]:
    import dataclasses

    return {"kind": info.kind.value, "backend": info.name, "distribution": info.distribution,
            "version": info.version, "config": _jsonable(dataclasses.asdict(stage.config))}


def _jsonable(obj: Any) -> Any:
    import enum

    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def save_artifact(state: PipelineState, target: Path, overwrite: bool, records: list[dict[str, Any]],
                  model_info: dict[str, Any]) -> None:
    """Write the model, its tokenizer and the manifest into ``target`` atomically."""
    writer = state.artifact_writer
    with artifact.atomic_directory(target, overwrite=overwrite) as tmp:
        (writer or Stage()).save(state.model, tmp)
        state.tokenizer.save_pretrained(tmp)
        writer_record = next((r for r in records if writer and r["kind"] == writer.kind.value and
                              r["backend"] == writer.name), None)
        artifact.write_manifest(tmp, {"writer": writer_record, "stages": records, "model": model_info})


def load(path: str | Path, registry: Registry | None = None) -> torch.nn.Module:
    """Reload a slimkit artifact (any backend) as a model in eval mode."""
    from slimkit.models import load_pretrained

    manifest = artifact.read_manifest(path)
    writer = manifest.get("writer")
    if not writer:
        return load_pretrained(path)
    cls = (registry or default_registry()).get(Kind(writer["kind"]), writer["backend"])
    cls.check_dependencies()
    return cls.load(Path(path), manifest).eval()


def _fp32_size(model: torch.nn.Module) -> int:
    with tempfile.TemporaryDirectory(prefix="slimkit-baseline-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return artifact.directory_size(tmp)


def run(cfg: Any, output_dir: str | Path = ".", registry: Registry | None = None) -> dict[str, Any]:
    """Run one compression job and return its report (also written to ``output_dir``)."""
    registry = registry or default_registry()
    settings = _as_dict(cfg)
    output_dir = Path(output_dir)
    model_cfg, data_cfg, eval_cfg = settings["model"], settings["data"], settings["eval"]
    out_cfg = settings.get("output", {})
    target = Path(out_cfg.get("model_dir") or output_dir / "model")
    if target.exists() and not out_cfg.get("overwrite", False):
        raise ArtifactError(f"output.model_dir={str(target)!r} already exists; refusing to overwrite it "
                            "(set output.overwrite=true, or choose another output folder)")
    stages = resolve_stages(settings, registry)
    corpus = corpus_from_config(data_cfg)  # data.path read and checked before the model loads
    tasks = TaskSet(eval_cfg.get("tasks") or [])  # task data loaded offline before the model loads
    seed = int(settings.get("seed", 0))
    torch.manual_seed(seed)

    loaded = load_model(model_cfg["name"], model_cfg.get("path"), model_cfg.get("trust_remote_code", False), seed)
    data = build_splits(loaded.tokenizer, **{**data_cfg, "corpus": corpus})
    tasks.bind(data, loaded.tokenizer)  # tasks cut from the held-out text (cloze)
    model_info = {"name": loaded.name, "path": loaded.path, "provenance": loaded.provenance,
                  "parameters": loaded.parameters, "class": type(loaded.model).__name__}
    reference = copy.deepcopy(loaded.model).eval().requires_grad_(False)
    state = PipelineState(loaded.model, loaded.tokenizer, data, reference, settings=settings,
                          work_dir=output_dir, seed=seed, recover=recovery_hook(stages))
    bs = eval_cfg.get("batch_size", 4)

    def evaluate(model: torch.nn.Module, label: str) -> dict[str, Any]:
        if not eval_cfg.get("perplexity", True):
            return {}
        return quality_metrics(model, data.eval, bs, desc=f"perplexity [{label}]")

    def task_scores(model: torch.nn.Module, label: str) -> dict[str, Any]:
        return {"tasks": tasks.evaluate(model, loaded.tokenizer, eval_cfg.get("task_samples", 200), bs, label)}

    from slimkit.pipeline.baseline import (
        cached_baseline,  # in a sweep: evaluated once, reused by every job
    )

    baseline = cached_baseline(settings, lambda: {**evaluate(loaded.model, "baseline"), **task_scores(reference, "baseline"),
                                                  "size_bytes": _fp32_size(reference)})
    final = dict(baseline)
    records = []
    for stage, info in stages:
        log.info("applying %s", info.describe())
        record = stage_record(info, stage)
        start = time.perf_counter()
        metrics = stage.apply(state) or {}
        record["seconds"] = round(time.perf_counter() - start, 2)
        state.applied.append(info.kind.value)
        final = evaluate(state.model, info.name)
        record["metrics"] = _jsonable({**metrics, **final})
        records.append(record)

    save_artifact(state, target, bool(out_cfg.get("overwrite", False)), records, model_info)
    reloaded = load(target, registry)
    probe = data.eval[:1, :64]
    reload_diff = (model_logits(reloaded, probe) - model_logits(state.model, probe)).abs().max().item()
    if reload_diff > 1e-3:
        raise ArtifactError(f"the artifact in {target} reloads with logits differing by {reload_diff:.3g} from the "
                            "compressed model in memory; it is not a faithful save")

    final["size_bytes"] = artifact.directory_size(target) - _tokenizer_bytes(target)
    final["reload_max_abs_logit_diff"] = reload_diff
    final.update(task_scores(reloaded, "final"))
    if eval_cfg.get("latency", True):
        prompt = data.eval[:1, : eval_cfg.get("prompt_tokens", 128)]
        timed = latency({"baseline": reference, "final": reloaded}, prompt, threads=eval_cfg.get("threads", 1),
                        repeats=eval_cfg.get("repeats", 5), decode_tokens=eval_cfg.get("decode_tokens", 32))
        baseline.update(timed["baseline"])
        final.update(timed["final"])
    report = {
        "model": model_info,
        "data": data.info,
        "stages": records,
        "baseline": baseline,
        "final": final,
        "tasks": task_records(tasks.info(), baseline.get("tasks", {}), final.get("tasks", {})),
        "ratios": _ratios(baseline, final),
        "artifact": str(target),
        "seed": seed,
        "torch": torch.__version__,
    }
    report["ratios"].update({f"{name}_retained": t["retained"] for name, t in report["tasks"].items()
                             if t["retained"] is not None})
    write_reports(report, output_dir)
    return report


def _tokenizer_bytes(directory: Path) -> int:
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "vocab.json",
             "merges.txt", "tokenizer.model", "added_tokens.json", artifact.MANIFEST)
    return sum((directory / n).stat().st_size for n in names if (directory / n).is_file())


def _ratios(baseline: Mapping[str, Any], final: Mapping[str, Any]) -> dict[str, float]:
    ratios = {}
    if final.get("size_bytes"):
        ratios["size"] = baseline["size_bytes"] / final["size_bytes"]
    if final.get("decode_tokens_per_s") and baseline.get("decode_tokens_per_s"):
        ratios["speed"] = final["decode_tokens_per_s"] / baseline["decode_tokens_per_s"]
        ratios["prefill_speed"] = baseline["prefill_ms"] / final["prefill_ms"]
    if final.get("perplexity") and baseline.get("perplexity"):
        ratios["perplexity"] = final["perplexity"] / baseline["perplexity"]
    return ratios
