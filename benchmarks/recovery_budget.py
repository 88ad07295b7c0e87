"""How far float distillation brings a pruned model back, step by step: perplexity and tasks against training time.

Issue 15's 8x needs parameters removed (no int4 format a runtime serves stores 4.0 bits or fewer per weight), and
its perplexity target (+10%) then has to be met by the pruned model *before* int4 adds its own loss. This script
measures that bound for a run's config: it composes the config like the CLI (``OVERRIDES``: Hydra syntax, e.g.
``experiment=case_study_mobile_pruned``), applies the config's **pruner** once, then continues the config's **kd
distiller** as float distillation from the unpruned original (no QAT; at ``distiller.recovery_lr`` when set, as the
pruner's own recovery would) in chunks of ``--chunk`` steps, and evaluates
the model after each chunk exactly as the pipeline does (perplexity on ``data.eval``, every ``eval.tasks`` task).
Chunks resume from the distiller's own checkpoints (weights and optimizer state; the loop's batches and learning
rate depend only on the step), so the curve is one uninterrupted training run observed every ``--chunk`` steps.
Training seconds are summed over chunks (evaluation excluded): the x-axis a 60-minute budget is read on.

    OMP_NUM_THREADS=1 python benchmarks/recovery_budget.py --steps 768 --chunk 128 \\
        --out benchmarks/recovery_budget_<what>.json --png benchmarks/recovery_budget_<what>.png \\
        experiment=case_study_mobile_pruned data.path=runs/sentiment_mix.jsonl

The JSON is rewritten (atomically) after every point, so an interrupted run keeps what it measured; an existing
``--out`` is refused.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def _write(path: Path, record: dict[str, Any]) -> None:
    from slimkit.core.artifact import atomic_write_text

    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def plot(record: dict[str, Any], png: Path) -> None:
    """Perplexity ratio and task retention against training minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = record["points"]
    minutes = [p["train_seconds"] / 60 for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(minutes, [p["perplexity_ratio"] for p in points], "o-", label="pruned, float")
    left.axhline(1.10, color="grey", ls="--", label="+10% (issue 15)")
    left.set(xlabel="float distillation, minutes of training (1 thread)", ylabel="perplexity / fp32",
             title="perplexity")
    for p, m in zip(points, minutes):
        left.annotate(str(p["step"]), (m, p["perplexity_ratio"]), textcoords="offset points", xytext=(3, 4), fontsize=7)
    left.legend()
    for task in record["baseline"]["tasks"]:
        right.plot(minutes, [p["retained"].get(task, float("nan")) for p in points], "o-", label=task)
    right.axhline(0.97, color="grey", ls="--", label="97% (issue 15)")
    right.set(xlabel="float distillation, minutes of training (1 thread)", ylabel="retained (final / fp32)",
              title=f"tasks ({record['task_samples']} samples each at most)")
    right.legend()
    fig.suptitle(record["label"], fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as on the slimkit command line")
    parser.add_argument("--steps", type=int, required=True, help="float distillation steps in all")
    parser.add_argument("--chunk", type=int, required=True, help="evaluate every this many steps")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (must not exist)")
    parser.add_argument("--png", type=Path, help="plot of the curve (must not exist)")
    parser.add_argument("--label", default="", help="a line naming the run in the JSON and the plot")
    args = parser.parse_args(argv)
    for path in (args.out, args.png):
        if path is not None and path.exists():
            parser.error(f"{path} exists; results files are never overwritten: choose another name")
    if args.chunk <= 0 or args.steps <= 0 or args.steps % args.chunk:
        parser.error(f"--steps {args.steps} must be a positive multiple of --chunk {args.chunk}")

    import torch
    from omegaconf import OmegaConf

    from slimkit.core.plugin import Kind
    from slimkit.core.registry import default_registry
    from slimkit.core.state import PipelineState
    from slimkit.data import build_splits, corpus_from_config
    from slimkit.evaluation import quality_metrics
    from slimkit.evaluation.tasks import TaskSet
    from slimkit.models import load_model
    from slimkit.pipeline.config import stage_config
    from slimkit.pipeline.runner import resolve_stages
    from slimkit.testing.config import compose

    settings = OmegaConf.to_container(compose(*args.overrides), resolve=True)
    registry = default_registry()
    stages = {info.kind: stage for stage, info in resolve_stages(settings, registry)}  # checked before loading
    if Kind.PRUNER not in stages or (settings.get("distiller") or {}).get("backend") != "kd":
        parser.error("the composed config needs a pruner and distiller=kd (e.g. experiment=case_study_mobile_pruned)")
    pruner = stages[Kind.PRUNER]
    if settings["pruner"].get("recovery_steps"):
        parser.error(f"pruner.recovery_steps={settings['pruner']['recovery_steps']}: set pruner.recovery_steps=0; "
                     "this script does the recovery itself, in chunks")
    model_cfg, data_cfg, eval_cfg = settings["model"], settings["data"], settings["eval"]
    corpus = corpus_from_config(data_cfg)
    tasks = TaskSet(eval_cfg.get("tasks") or [])
    seed = int(settings.get("seed", 0))
    torch.manual_seed(seed)
    loaded = load_model(model_cfg["name"], model_cfg.get("path"), model_cfg.get("trust_remote_code", False), seed)
    tokenizer = loaded.tokenizer
    data = build_splits(tokenizer, **{**data_cfg, "corpus": corpus})
    tasks.bind(data, tokenizer)
    reference = copy.deepcopy(loaded.model).eval().requires_grad_(False)  # the teacher
    samples = eval_cfg.get("task_samples", 200)
    batch = eval_cfg.get("batch_size", 1)

    def measure(model: torch.nn.Module, label: str) -> dict[str, Any]:
        scores = tasks.evaluate(model, tokenizer, samples, batch, label)
        return {"perplexity": quality_metrics(model, data.eval, batch, desc=f"perplexity [{label}]")["perplexity"],
                "tasks": scores}

    baseline = measure(loaded.model, "fp32")
    state = PipelineState(loaded.model, tokenizer, data, reference, settings=settings, seed=seed)
    start = time.perf_counter()
    prune_metrics = pruner.apply(state)
    record: dict[str, Any] = {
        "label": args.label, "overrides": args.overrides, "torch_threads": torch.get_num_threads(),
        "pruner": {k: v for k, v in (prune_metrics or {}).items() if k != "per_layer"},
        "pruner_seconds": round(time.perf_counter() - start, 1),
        "data": data.info, "task_samples": samples, "baseline": baseline, "points": []}

    def add_point(step: int, seconds: float) -> None:
        scores = measure(state.model, f"step {step}")
        retained = {t: scores["tasks"][t]["acc"] / baseline["tasks"][t]["acc"] for t in baseline["tasks"]
                    if "acc" in scores["tasks"].get(t, {}) and baseline["tasks"][t].get("acc")}
        record["points"].append({"step": step, "train_seconds": round(seconds, 1), **scores,
                                 "perplexity_ratio": scores["perplexity"] / baseline["perplexity"],
                                 "retained": retained})
        _write(args.out, record)
        print(f"step {step}: ppl x{record['points'][-1]['perplexity_ratio']:.3f} retained {retained} "
              f"({seconds / 60:.1f} min of training)", flush=True)

    add_point(0, 0.0)
    pruned = copy.deepcopy(state.model)
    kd_cls = registry.get(Kind.DISTILLER, "kd")
    kd_cfg = settings["distiller"]
    lr = kd_cfg["lr"] if kd_cfg.get("recovery_lr") is None else kd_cfg["recovery_lr"]  # as the kd plugin's recover()
    trained = 0.0
    with tempfile.TemporaryDirectory(prefix="recovery_budget_") as checkpoints:
        for step in range(args.chunk, args.steps + 1, args.chunk):
            node = {**kd_cfg, "qat_bits": None, "lr": lr, "max_steps": step, "checkpoint_every": args.chunk,
                    "keep_checkpoints": 1, "checkpoint_dir": checkpoints, "resume": step > args.chunk,
                    "eval_every": 0, "patience": 0}
            distiller = kd_cls(stage_config(kd_cls, node, "distiller"))
            state.model = copy.deepcopy(pruned)  # the same student each chunk: the checkpoint carries the training
            begin = time.perf_counter()
            distiller.apply(state)
            trained += time.perf_counter() - begin
            add_point(step, trained)
    record["distiller"] = {k: v for k, v in node.items() if k not in ("checkpoint_dir", "resume", "max_steps")}
    record["distiller"]["max_steps"] = args.steps
    _write(args.out, record)
    if args.png:
        plot(record, args.png)


if __name__ == "__main__":
    main()
