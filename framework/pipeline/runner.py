"""The pipeline: load → evaluate → apply stages in order (evaluating each) → save atomically →
reload and verify → measure latency against the original → report."""

from __future__ import annotations

import fnmatch
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from slimkit.core import artifact
from slimkit.core.errors import ArtifactError, ConfigError, StageOrderError
from slimkit.core.loader import load
from slimkit.core.memory import peak_rss_bytes, release_memory
from slimkit.core.plugin import STAGE_KINDS, Kind, PrunerConfig, QuantizerConfig, Stage
from slimkit.core.processes import is_main_process
from slimkit.core.registry import PluginInfo, Registry, default_registry
from slimkit.core.state import PipelineState
from slimkit.data import build_splits, corpus_from_config
from slimkit.deploy import plan_deployments
from slimkit.evaluation import latency, model_logits, quality_metrics
from slimkit.evaluation.tasks import TaskSet, task_records
from slimkit.models import load_model, model_skeleton, resolve_device, resolve_dtype
from slimkit.pipeline.config import check_eval, stage_config
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
    check_storage(stages)
    return stages


def check_model(stages: list[tuple[Stage, PluginInfo]], model_cfg: Mapping[str, Any]) -> None:
    """Let each stage refuse the model from its config alone (model type, layout), before any weights load."""
    from slimkit.models import model_config

    config = model_config(model_cfg.get("name", "smollm2-135m"), model_cfg.get("path"),
                          model_cfg.get("trust_remote_code", False))
    if config is not None:
        for stage, _ in stages:
            stage.check_model(config)


def recovery_hook(stages: list[tuple[Stage, PluginInfo]]):
    """The recovery step pruning schedules call: a configured distiller's ``recover`` if it has one
    (distillation from the original model), else plain next-token fine-tuning."""
    from slimkit.toolkit.training import finetune

    for stage, info in stages:
        if info.kind is Kind.DISTILLER and callable(getattr(stage, "recover", None)):
            return stage.recover
    return finetune


def quantization_simulator(stages: list[tuple[Stage, PluginInfo]]):
    """The run's quantizer's ``simulate`` (quantization-aware training on its own grid), if it offers one."""
    for stage, info in stages:
        if info.kind is Kind.QUANTIZER and callable(getattr(stage, "simulate", None)):
            return stage.simulate
    return None


def check_supports(stages: list[tuple[Stage, PluginInfo]], dtype: str, device: str) -> None:
    """Refuse a model dtype/device a chosen backend does not declare in ``supports`` (before any load)."""
    for stage, info in stages:
        for key, value, field in (("model.dtype", dtype, "dtypes"), ("model.device", device, "devices")):
            allowed = sorted(type(stage).supports.get(field, ()))
            if value not in allowed:
                raise ConfigError(key, value, "one of " + ", ".join(map(repr, allowed)),
                                  f"what the {info.kind.value} {info.name!r} supports")


def reference_needs(stages: list[tuple[Stage, PluginInfo]]) -> list[bool]:
    """Which stages need the original model's weights: those that say so (``needs_reference``), and
    pruners when the recovery step they may call is a distiller that does."""
    hook = recovery_hook(stages)
    recovery_needs = bool(getattr(getattr(hook, "__self__", None), "needs_reference", False))
    return [bool(stage.needs_reference) or (info.kind is Kind.PRUNER and recovery_needs) for stage, info in stages]


class Original:
    """The original model on demand, never kept as a second copy: reloaded from where it came from
    (a folder, the embedded cache, or the seeded config of the tiny model) when a stage or the timing
    needs its weights (otherwise stages see :func:`slimkit.models.model_skeleton`'s weightless copy)."""

    def __init__(self, model_cfg: Mapping[str, Any], seed: int):
        self.model_cfg, self.seed = model_cfg, seed

    def load(self) -> torch.nn.Module:
        """A fresh, frozen copy of the original model (the global RNG state is left as it was)."""
        cfg = self.model_cfg
        with torch.random.fork_rng():
            loaded = load_model(cfg["name"], cfg.get("path"), cfg.get("trust_remote_code", False), self.seed,
                                dtype=cfg.get("dtype", "float32"), device=cfg.get("device", "cpu"))
        return loaded.model.eval().requires_grad_(False)


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


#: an artifact must reload to logits within this of the model in memory, relative to the largest |logit|
#: (every first-party backend reloads bit-exactly; fp16 rounding of weights, say, exceeds it)
RELOAD_RTOL = 1e-5


def verify_reload(directory: Path, expected: torch.Tensor, probe: torch.Tensor,
                  registry: Registry | None = None) -> tuple[torch.nn.Module, float]:
    """Reload the artifact in ``directory`` and compare its logits on ``probe`` with ``expected`` (the logits of
    the model that was saved).

    Returns the reloaded model and the largest absolute logit difference; raises :class:`ArtifactError`
    when that exceeds ``RELOAD_RTOL`` × max(1, max |logit|)."""
    reloaded = load(directory, registry)
    diff = (model_logits(reloaded, probe).float() - expected.float()).abs().max().item()
    bound = RELOAD_RTOL * max(1.0, expected.abs().max().item())
    if not diff <= bound:
        raise ArtifactError(f"the artifact reloads with logits differing by {diff:.3g} (allowed {bound:.3g}) from the "
                            "compressed model in memory: it is not a faithful save (a stage that changes weights in a "
                            "way save_pretrained cannot write must set state.artifact_writer); nothing was kept")
    return reloaded, diff


def save_artifact(state: PipelineState, target: Path, overwrite: bool, records: list[dict[str, Any]],
                  model_info: dict[str, Any], probe: torch.Tensor | None = None,
                  registry: Registry | None = None, release_model: bool = False
                  ) -> tuple[torch.nn.Module | None, float | None]:
    """Write the model, its tokenizer and the manifest into ``target`` atomically.

    With a ``probe``, the artifact is reloaded and verified (:func:`verify_reload`) *before* it is renamed
    into place, so an unfaithful save leaves no folder behind. With ``release_model`` the in-memory model is
    dropped (``state.model = None``) after its logits on the probe are taken and before the reload, so the two
    are never held at once. Returns (reloaded model, logit difference), or (None, None) without a probe."""
    writer = state.artifact_writer
    with artifact.atomic_directory(target, overwrite=overwrite) as tmp:
        (writer or Stage()).save(state.model, tmp)
        state.tokenizer.save_pretrained(tmp)
        writer_record = next((r for r in records if writer and r["kind"] == writer.kind.value and
                              r["backend"] == writer.name), None)
        artifact.write_manifest(tmp, {"writer": writer_record, "stages": records, "model": model_info})
        if probe is None:
            return None, None
        expected = model_logits(state.model, probe)
        if release_model:
            state.model = None
            release_memory()
        return verify_reload(tmp, expected, probe, registry)


def _saved_size(model: torch.nn.Module) -> int:
    with tempfile.TemporaryDirectory(prefix="slimkit-baseline-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return artifact.directory_size(tmp)


def check_module_globs(stages: list[tuple[Stage, PluginInfo]], skeleton: torch.nn.Module) -> None:
    """Every include/exclude/overrides glob of a pruner or quantizer must match a Linear module of the model
    (checked on a weightless copy, before any weights load)."""
    from slimkit.toolkit.modules import select_modules

    for stage, info in stages:
        cfg = stage.config
        if not isinstance(cfg, (PrunerConfig, QuantizerConfig)):
            continue
        key = info.kind.value
        chosen = select_modules(skeleton, cfg.include, cfg.exclude, prefix=key)
        # a quantizer's overrides may also re-include an excluded module; a pruner's apply to selected ones
        pool = select_modules(skeleton, ["*"], [], prefix=key) if isinstance(cfg, QuantizerConfig) else chosen
        for glob in cfg.overrides:
            if not any(fnmatch.fnmatchcase(name, glob) for name in pool):
                raise ConfigError(f"{key}.overrides", glob, f"a glob matching at least one Linear module "
                                  f"(e.g. {', '.join(list(pool)[:3])})", "it matches none")


def check_storage(stages: list[tuple[Stage, PluginInfo]]) -> None:
    """Refuse, at config time, a stage whose artifact cannot keep the zeros an earlier stage made sparse."""
    zeroed_by = None
    for stage, info in stages:
        if zeroed_by and not stage.keeps_sparse_storage():
            raise ConfigError(f"{info.kind.value}", info.name, "a backend that stores exact zeros sparsely after the "
                              f"unstructured pruner {zeroed_by!r} (quanto, int8, or this backend with settings that "
                              "keep zeros as zero bytes)", f"{info.name} with these settings packs weights so that the "
                              "pruned zeros would be stored densely and the file would not shrink")
        if stage.zeroes_weights:
            zeroed_by = info.name


def linear_weight_count(model: torch.nn.Module) -> tuple[int, int]:
    """(weights, nonzero weights) of the float Linear (and GPT-2 Conv1D) layers, output embeddings excluded."""
    from slimkit.toolkit.modules import linear_types

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    types = linear_types()
    total = nonzero = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if module is head or not isinstance(module, types) or not isinstance(weight, torch.Tensor):
            continue
        if not weight.is_floating_point() or weight.device.type == "meta":
            continue
        total += weight.numel()
        nonzero += int(torch.count_nonzero(weight))
    return total, nonzero


def _baseline_folder(loaded, original: "Original", scratch: Path) -> Path:
    """A float folder of the original model for timing processes: the model's own folder when it has one
    (then the original is not loaded here at all), else a copy written to ``scratch``."""
    folder = Path(loaded.path) if loaded.path else None
    if folder is not None and folder.is_dir() and any(folder.glob("*.safetensors")):
        return folder
    original.load().save_pretrained(scratch, safe_serialization=True)
    return scratch


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
    check_eval(eval_cfg)
    stages = resolve_stages(settings, registry)
    check_model(stages, model_cfg)
    corpus = corpus_from_config(data_cfg)  # data.path read and checked before the model loads
    tasks = TaskSet(eval_cfg.get("tasks") or [])  # task data loaded offline before the model loads
    dtype = resolve_dtype(model_cfg.get("dtype", "float32"), model_cfg["name"], model_cfg.get("path"))
    device = resolve_device(model_cfg.get("device", "cpu"))
    check_supports(stages, dtype, device)
    deploy_plan = plan_deployments(settings, registry, output_dir)  # exporters: checked before the model loads
    seed = int(settings.get("seed", 0))
    torch.manual_seed(seed)
    skeleton = model_skeleton(model_cfg["name"], model_cfg.get("path"), model_cfg.get("trust_remote_code", False), seed)
    check_module_globs(stages, skeleton)
    main = is_main_process()  # data-parallel workers other than the main one train, and write nothing

    loaded = load_model(model_cfg["name"], model_cfg.get("path"), model_cfg.get("trust_remote_code", False), seed,
                        dtype=dtype, device=model_cfg.get("device", "cpu"))
    tokenizer = loaded.tokenizer
    data = build_splits(tokenizer, **{**data_cfg, "corpus": corpus})
    tasks.bind(data, tokenizer)  # tasks cut from the held-out text (cloze)
    release_memory()  # tokenizing the corpus leaves freed buffers behind
    model_info = {"name": loaded.name, "path": loaded.path, "provenance": loaded.provenance,
                  "parameters": loaded.parameters, "class": type(loaded.model).__name__, "dtype": dtype,
                  "device": model_cfg.get("device", "cpu")}
    original = Original({**model_cfg, "dtype": dtype}, seed)
    skeleton = skeleton.eval().requires_grad_(False)
    state = PipelineState(loaded.model, tokenizer, data, skeleton, settings=settings,
                          work_dir=output_dir, seed=seed, recover=recovery_hook(stages),
                          simulate_quantization=quantization_simulator(stages))
    loaded.model = None  # the state holds the one full copy of the model
    bs = eval_cfg.get("batch_size", 1)

    # each evaluation starts from a trimmed heap: its transients (logits, lm-eval's requests) would otherwise
    # stack on what the previous one freed
    def evaluate(model: torch.nn.Module, label: str) -> dict[str, Any]:
        if not eval_cfg.get("perplexity", True) or not main:
            return {}
        release_memory()
        return quality_metrics(model, data.eval, bs, desc=f"perplexity [{label}]")

    def task_scores(model: torch.nn.Module, label: str) -> dict[str, Any]:
        if not main:
            return {}
        release_memory()
        return {"tasks": tasks.evaluate(model, tokenizer, eval_cfg.get("task_samples", 200), bs, label)}

    from slimkit.pipeline.baseline import cached_baseline  # in a sweep: evaluated once, reused by every job

    # the baseline is measured on the loaded model before any stage changes it: no copy kept for it
    baseline = cached_baseline(settings, lambda: {**evaluate(state.model, "baseline"),
                                                  **task_scores(state.model, "baseline"),
                                                  "size_bytes": _saved_size(state.model)}) if main else {}
    linear_total, _ = linear_weight_count(state.model)
    final = dict(baseline)
    achieved_sparsity = 0.0
    records = []
    needs = reference_needs(stages)
    last_need = max((i for i, need in enumerate(needs) if need), default=-1)
    for index, (stage, info) in enumerate(stages):
        if needs[index] and state.reference is skeleton:
            log.info("loading the original model beside the compressed one (needed by %s)", info.name)
            state.reference = original.load()
        log.info("applying %s", info.describe())
        record = stage_record(info, stage)
        start = time.perf_counter()
        metrics = stage.apply(state) or {}
        record["seconds"] = round(time.perf_counter() - start, 2)
        state.applied.append(info.kind.value)
        if index == last_need:  # no later stage needs the original's weights
            state.reference = skeleton
        release_memory()  # what the stage replaced (float weights, scores, copies)
        if info.kind is Kind.PRUNER:  # zeroed or removed, as a fraction of the original's Linear weights
            _, nonzero = linear_weight_count(state.model)
            achieved_sparsity = 1 - nonzero / linear_total if linear_total else 0.0
            metrics.setdefault("achieved_sparsity", achieved_sparsity)
        final = evaluate(state.model, info.name)
        record["metrics"] = _jsonable({**metrics, **final})
        records.append(record)
    if not main:
        return {"stages": records, "process": "worker"}

    probe = data.eval[:1, :64]
    # the artifact is the model from here on: the compressed model is released before the reload check
    reloaded, reload_diff = save_artifact(state, target, bool(out_cfg.get("overwrite", False)), records, model_info,
                                          probe=probe, registry=registry, release_model=True)
    release_memory()  # the loader's buffers
    final["size_bytes"] = artifact.directory_size(target) - _tokenizer_bytes(target)
    final["reload_max_abs_logit_diff"] = reload_diff
    final["achieved_sparsity"] = achieved_sparsity
    original_parameters = model_info["parameters"]  # counted before any stage changed the model
    if original_parameters:  # stored bits per parameter of the original model: comparable across jobs and backends
        final["bits_per_weight"] = 8 * final["size_bytes"] / original_parameters
        baseline["bits_per_weight"] = 8 * baseline["size_bytes"] / original_parameters
    final.update(task_scores(reloaded, "final"))
    timing = None
    if eval_cfg.get("latency", True):
        prompt = data.eval[:1, : eval_cfg.get("prompt_tokens", 128)]
        timing, timed = _time(eval_cfg, loaded, original, reloaded, target, prompt)
        release_memory()
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
        "timing": timing,
        "artifact": str(target),
        "seed": seed,
        "torch": torch.__version__,
        "resources": {"peak_rss_bytes": peak_rss_bytes()},
    }
    report["ratios"].update({f"{name}_retained": t["retained"] for name, t in report["tasks"].items()
                             if t["retained"] is not None})
    if deploy_plan:  # each export written to <output>/deploy/<exporter>/ and measured in its runtime
        # the reloaded artifact (verified to give the in-memory model's logits): the in-memory copy was freed
        report["deployments"] = deploy_plan.run(target, reloaded, tokenizer, output_dir, data.eval, baseline,
                                                state.artifact_writer)
    write_reports(report, output_dir)
    return report


def _time(eval_cfg: Mapping[str, Any], loaded, original: "Original", reloaded: torch.nn.Module, target: Path,
          prompt: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
    """Latency of the artifact against the original, timed as ``eval.latency_condition`` says. In the serving
    condition this process never holds the original beside the artifact: the timing processes load them."""
    from slimkit.evaluation.serving import CONDITIONS, serving_latency

    threads, repeats = eval_cfg.get("threads", 1), eval_cfg.get("repeats", 5)
    decode_tokens = eval_cfg.get("decode_tokens", 32)
    condition = eval_cfg.get("latency_condition", "serving")
    timing: dict[str, Any] = {"condition": condition, "description": CONDITIONS[condition], "threads": threads,
                              "repeats": repeats, "decode_tokens": decode_tokens, "prompt_tokens": int(prompt.shape[1])}
    if condition == "in_process":
        reference = original.load()  # timed against the original, reloaded for the timing only
        in_process = latency({"baseline": reference, "final": reloaded}, prompt, threads=threads, repeats=repeats,
                             decode_tokens=decode_tokens)
        del reference
        timing.update({"processes": 0, **_speedups(in_process)})
        return timing, in_process
    with tempfile.TemporaryDirectory(prefix="slimkit-timing-baseline-") as scratch:
        folder = _baseline_folder(loaded, original, Path(scratch))
        served = serving_latency(folder, target, prompt[0].tolist(), processes=eval_cfg.get("latency_processes", 3),
                                 threads=threads, repeats=repeats, decode_tokens=decode_tokens)
    timing.update({"processes": len(served["runs"]), "prefill_speedup": served["prefill_speedup"],
                   "decode_speedup": served["decode_speedup"], "top1_agreement": served["top1_agreement"]})
    return timing, {"baseline": served["baseline"], "final": served["final"]}


def _speedups(timed: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {"prefill_speedup": timed["baseline"]["prefill_ms"] / timed["final"]["prefill_ms"],
            "decode_speedup": timed["final"]["decode_tokens_per_s"] / timed["baseline"]["decode_tokens_per_s"]}


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
