"""Shared pruning machinery: masks (per layer, per output row, global, N:M), schedules with recovery
and a perplexity stop criterion, and a per-block sensitivity scan.

Any pruner can use the schedule: :func:`run_schedule` calls ``prune_to(fraction)`` ("prune the model
to ``fraction`` of the target sparsity") at each step, then ``state.recover(state, recovery_steps)``,
then checks held-out perplexity. Unstructured pruners subclass :class:`UnstructuredPruner` and only
supply :meth:`UnstructuredPruner.scores` (an importance per weight; the lowest are zeroed).

Honest notes:

* Zeroed weights make files smaller with :mod:`slimkit.toolkit.storage`, not inference faster: dense CPU
  kernels multiply the zeros too (BACKENDS.md: "unstructured 50% masks removed: latency ~1.0").
* ``N:M`` masks (e.g. ``2:4``: of every 4 consecutive input weights of a row keep the 2 most
  important) only pay off with semi-structured sparse kernels, which exist for CUDA GPUs only; on
  CPU an N:M-pruned model runs exactly as fast as the dense one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, List, Mapping, Optional

import torch
from tqdm.auto import tqdm

from slimkit.core.errors import ConfigError, DataError
from slimkit.core.plugin import Kind, PrunerConfig, Stage, check_choice, check_range
from slimkit.toolkit.modules import _matches, select_modules, weight_matrix

log = logging.getLogger("slimkit")

SCOPES = ("layer", "row", "global")
RAMPS = ("linear", "cubic")
_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK = re.compile(r"^(.*?\.(?:layers|h)\.\d+)\.")  # model.layers.3 (Llama, OPT, GPT-NeoX), transformer.h.3 (GPT-2)

__all__ = ["PruningConfig", "ScheduleConfig", "SensitivityConfig", "UnstructuredPruner", "compute_masks",
           "parse_pattern", "ramp_fractions", "recovery_step", "run_schedule", "sensitivity_scan",
           "sensitivity_allocation", "sparsity_report", "calibration_loss"]


# --- config ----------------------------------------------------------------------------------------

def _coerce(cls: type, value: Any, key: str) -> Any:
    """Build a nested config dataclass from a plain mapping (what Hydra/YAML hands over)."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(key, value, f"a mapping with keys of {cls.__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", value[unknown[0]], f"a key of {cls.__name__}: {', '.join(sorted(names))}")
    return cls(**value)


@dataclasses.dataclass
class ScheduleConfig:
    """How the target sparsity is reached: in ``steps`` (1 = one-shot) along a ramp, with optional
    recovery fine-tuning after each step and a perplexity bound that stops (and rolls back) early."""

    #: pruning steps; 1 = one-shot
    steps: int = 1
    #: 'linear' or 'cubic' (Zhu & Gupta 2017: big steps first, small ones near the target)
    ramp: str = "cubic"
    #: recovery optimizer steps after each pruning step, through ``state.recover`` (0 = none)
    recovery_steps: int = 0
    #: stop when validation perplexity exceeds this × the unpruned value, rolling back to the last
    #: step within the bound; null = no check. Must be >= 1 (below 1 it would stop before step 1)
    max_perplexity_ratio: Optional[float] = None
    #: validation windows for the stop criterion, carved from the END of the training slice and
    #: withheld from recovery and calibration while the schedule runs
    validation_windows: int = 4

    def __post_init__(self) -> None:
        check_range("pruner.schedule.steps", self.steps, 1)
        check_choice("pruner.schedule.ramp", self.ramp, RAMPS)
        check_range("pruner.schedule.recovery_steps", self.recovery_steps, 0)
        check_range("pruner.schedule.validation_windows", self.validation_windows, 1)
        if self.max_perplexity_ratio is not None and not self.max_perplexity_ratio >= 1.0:
            raise ConfigError("pruner.schedule.max_perplexity_ratio", self.max_perplexity_ratio,
                              "null or a number >= 1", "the unpruned model itself is at ratio 1, so the schedule "
                              "would stop before its first step")


@dataclasses.dataclass
class SensitivityConfig:
    """Per-decoder-block sensitivity scan (sparsity vs calibration loss), written to ``state.work_dir``."""

    #: run the scan before pruning (writes sensitivity.json/.csv/.png)
    scan: bool = False
    #: sparsities tried per block
    sparsities: List[float] = dataclasses.field(default_factory=lambda: [0.3, 0.5, 0.7])
    #: calibration windows the loss is measured on
    windows: int = 4
    #: set per-block sparsity from the scan: blocks ranked by loss increase at the target sparsity get
    #: target ± max_shift linearly (least sensitive most pruned); the mean over blocks stays the target
    allocate: bool = False
    #: the largest deviation from the target sparsity a block gets under ``allocate``
    max_shift: float = 0.1

    def __post_init__(self) -> None:
        if not self.sparsities:
            raise ConfigError("pruner.sensitivity.sparsities", self.sparsities, "at least one sparsity in (0, 1)")
        for s in self.sparsities:
            check_range("pruner.sensitivity.sparsities", s, 0.0, 1.0, low_open=True, high_open=True)
        check_range("pruner.sensitivity.windows", self.windows, 1)
        check_range("pruner.sensitivity.max_shift", self.max_shift, 0.0, 0.5)


@dataclasses.dataclass
class PruningConfig(PrunerConfig):
    """Settings every unstructured pruner shares, on top of :class:`PrunerConfig`'s sparsity,
    include/exclude (Linear globs) and overrides (glob -> sparsity)."""

    #: comparison group: 'layer' (each layer to ``sparsity``), 'row' (each output row), 'global' (one threshold)
    scope: str = "layer"
    #: null (unstructured) or 'N:M': keep N of every M consecutive input weights per row (sparsity 1 - N/M)
    pattern: Optional[str] = None
    #: steps, ramp, recovery and the perplexity stop criterion
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    #: optional per-block sensitivity scan (and sensitivity-guided per-block sparsity)
    sensitivity: SensitivityConfig = dataclasses.field(default_factory=SensitivityConfig)

    #: scopes this backend supports (not a config field)
    scopes = SCOPES

    def __post_init__(self) -> None:
        super().__post_init__()
        self.schedule = _coerce(ScheduleConfig, self.schedule, "pruner.schedule")
        self.sensitivity = _coerce(SensitivityConfig, self.sensitivity, "pruner.sensitivity")
        check_choice("pruner.scope", self.scope, self.scopes)
        nm = parse_pattern(self.pattern)
        if nm is not None:
            n, m = nm
            if not math.isclose(self.sparsity, 1 - n / m):
                raise ConfigError("pruner.sparsity", self.sparsity, f"{1 - n / m:g} with pruner.pattern={self.pattern!r}",
                                  "an N:M pattern fixes the sparsity at 1 - N/M")
            if self.schedule.steps > 1:
                raise ConfigError("pruner.schedule.steps", self.schedule.steps, "1 with an N:M pattern",
                                  "N:M masks are applied in one step; use schedule.recovery_steps to recover after it")
            if self.overrides:
                raise ConfigError("pruner.overrides", self.overrides, "{} with an N:M pattern", "N:M fixes every layer's sparsity")
            if self.sensitivity.allocate:
                raise ConfigError("pruner.sensitivity.allocate", True, "false with an N:M pattern")
        if self.scope == "global" and (self.overrides or self.sensitivity.allocate):
            raise ConfigError("pruner.scope", self.scope, "'layer' or 'row' when overrides or sensitivity.allocate "
                              "sets per-layer sparsities", "a global threshold has no per-layer target")
        if self.overrides and self.sensitivity.allocate:
            raise ConfigError("pruner.overrides", self.overrides, "{} with sensitivity.allocate=true",
                              "both would set per-layer sparsity")


def parse_pattern(pattern: Optional[str]) -> Optional[tuple[int, int]]:
    """``'2:4'`` → ``(2, 4)``; ``None`` → ``None``; anything else is a :class:`ConfigError`."""
    if pattern is None:
        return None
    match = _PATTERN.match(str(pattern))
    if not match or not 0 < int(match.group(1)) < int(match.group(2)):
        raise ConfigError("pruner.pattern", pattern, "null or 'N:M' with 0 < N < M, e.g. '2:4'")
    return int(match.group(1)), int(match.group(2))


# --- masks -----------------------------------------------------------------------------------------

def compute_masks(scores: Mapping[str, torch.Tensor], targets: Mapping[str, float], scope: str = "layer",
                  nm: Optional[tuple[int, int]] = None) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (True = keep) from importance ``scores`` (shape [out, in] each).

    ``targets`` maps each layer to its sparsity. The lowest scores are dropped: exactly
    ``round(s * numel)`` per layer (``layer``), ``round(s * in)`` per output row (``row``), or the weights
    under one threshold across all layers (``global``, which needs the same target everywhere). With
    ``nm=(N, M)`` each row keeps the N highest of every M consecutive scores, whatever the scope.
    """
    masks: dict[str, torch.Tensor] = {}
    if nm is not None:
        n, m = nm
        for name, score in scores.items():
            rows, cols = score.shape
            if cols % m:
                raise ConfigError("pruner.pattern", f"{n}:{m}", "an M that divides every pruned layer's input width",
                                  f"{name} has {cols} inputs")
            groups = score.reshape(rows, cols // m, m)
            keep = torch.zeros_like(groups, dtype=torch.bool)
            keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
            masks[name] = keep.reshape(rows, cols)
        return masks
    if scope == "global":
        levels = set(targets.values())
        if len(levels) != 1:
            raise ConfigError("pruner.scope", scope, "'layer' or 'row' for per-layer sparsities")
        sparsity = levels.pop()
        total = sum(s.numel() for s in scores.values())
        k = int(round(sparsity * total))
        if k == 0:
            return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
        threshold = torch.cat([s.reshape(-1).float() for s in scores.values()]).kthvalue(k).values
        return {name: s.float() > threshold for name, s in scores.items()}
    for name, score in scores.items():
        sparsity = targets[name]
        keep = torch.ones(score.shape, dtype=torch.bool)  # contiguous even for a transposed (Conv1D) score
        if scope == "row":
            k = int(round(sparsity * score.shape[1]))
            if k:
                keep.scatter_(1, score.topk(k, dim=1, largest=False).indices, False)
        else:
            k = int(round(sparsity * score.numel()))
            if k:
                keep.view(-1)[score.reshape(-1).topk(k, largest=False).indices] = False
        masks[name] = keep
    return masks


def apply_masks(layers: Mapping[str, torch.nn.Module], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the weights where the mask is False, in place (permanent). Writes +0.0 (``mul`` by a 0/1
    mask would leave -0.0 for negative weights); zeros already there are made +0.0 too."""
    with torch.no_grad():
        for name, mask in masks.items():
            w = weight_matrix(layers[name])  # [out, in] for Linear and Conv1D alike
            w.masked_fill_(~mask | (w == 0), 0.0)


def sparsity_report(layers: Mapping[str, torch.nn.Module]) -> dict[str, Any]:
    """Actual sparsity (fraction of exact zeros) per layer and over all of ``layers``."""
    per_layer, zeros, total = {}, 0, 0
    for name, module in layers.items():
        w = module.weight.detach()
        z = w.numel() - int(torch.count_nonzero(w))
        per_layer[name] = round(z / w.numel(), 4)
        zeros, total = zeros + z, total + w.numel()
    return {"sparsity": zeros / total if total else 0.0, "pruned_layers": len(layers), "zeroed_weights": zeros,
            "per_layer_sparsity": per_layer}


# --- schedule --------------------------------------------------------------------------------------

def ramp_fractions(steps: int, ramp: str = "cubic") -> list[float]:
    """Fractions of the target sparsity after each step: linear ``i/steps`` or cubic ``1-(1-i/steps)^3``."""
    check_choice("pruner.schedule.ramp", ramp, RAMPS)
    if ramp == "linear":
        return [i / steps for i in range(1, steps + 1)]
    return [1 - (1 - i / steps) ** 3 for i in range(1, steps + 1)]


@contextlib.contextmanager
def held_out_validation(state, windows: int) -> Iterator[Optional[torch.Tensor]]:
    """Yield the last ``windows`` training windows as a validation slice and hide them from
    ``state.data.train`` (so recovery and calibration never see them) until the block ends."""
    if not windows:
        yield None
        return
    data = state.data
    n = data.train.shape[0]
    if n - windows < max(data.calibration_samples, 1):
        raise DataError(f"pruner.schedule.validation_windows={windows} leaves {n - windows} of the {n} training "
                        f"windows, fewer than the {data.calibration_samples} calibration windows; raise "
                        "data.train_tokens or lower validation_windows")
    state.data = dataclasses.replace(data, train=data.train[: n - windows])
    try:
        yield data.train[n - windows:]
    finally:
        state.data = data


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def recovery_step(state, steps: int) -> dict[str, Any]:
    """``steps`` of the run's recovery step on ``state.model`` (``state.recover``: a distiller's, e.g. kd's
    distillation from the original; plain next-token fine-tuning when the run has none); its scalar metrics."""
    recover = state.recover
    if recover is None:
        from slimkit.toolkit.training import finetune as recover
    metrics = recover(state, steps) or {}
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


def run_schedule(state, prune_to: Callable[[float], Mapping[str, Any]], schedule: ScheduleConfig,
                 desc: str = "pruning schedule") -> dict[str, Any]:
    """Reach the target sparsity in ``schedule.steps`` steps; any pruner can be driven by it.

    ``prune_to(fraction)`` prunes ``state.model`` to ``fraction`` of the target (1.0 = the target) and
    returns metrics including ``"sparsity"``. After each step ``state.recover(state, recovery_steps)``
    fine-tunes (plain next-token fine-tuning when the state has no hook). With
    ``max_perplexity_ratio`` set, perplexity on the held-out validation slice (the last
    ``validation_windows`` training windows) is checked after each step; the first step past the
    bound is rolled back and the schedule stops there. Returns where it stopped and why.
    """
    from slimkit.evaluation import perplexity

    fractions = ramp_fractions(schedule.steps, schedule.ramp)
    bound = schedule.max_perplexity_ratio
    history: list[dict[str, Any]] = []
    result: dict[str, Any] = {"planned_steps": schedule.steps, "ramp": schedule.ramp,
                              "recovery_steps": schedule.recovery_steps, "max_perplexity_ratio": bound}
    stopped = "target reached"
    with held_out_validation(state, schedule.validation_windows if bound else 0) as validation:
        if bound:
            base = perplexity(state.model, validation, desc="validation perplexity [unpruned]")
            result["validation"] = {"slice": f"last {validation.shape[0]} training windows (withheld from recovery "
                                             "and calibration)", "unpruned_perplexity": base}
            kept = _snapshot(state.model)
        bar = tqdm(fractions, desc=desc, unit="step")
        for step, fraction in enumerate(bar, 1):
            entry: dict[str, Any] = {"step": step, "fraction_of_target": round(fraction, 4)}
            metrics = dict(prune_to(fraction))
            entry["sparsity"] = metrics.get("sparsity")
            if schedule.recovery_steps:
                entry["recovery"] = recovery_step(state, schedule.recovery_steps)
            if bound:
                ppl = perplexity(state.model, validation, desc=f"validation perplexity [step {step}]")
                entry["validation_perplexity"] = ppl
                entry["ratio"] = ppl / base
                bar.set_postfix(sparsity=f"{entry['sparsity']:.3f}", ppl_ratio=f"{ppl / base:.3f}")
                if not ppl <= bound * base:  # NaN counts as over the bound
                    state.model.load_state_dict(kept)
                    entry["rolled_back"] = True
                    history.append(entry)
                    stopped = (f"validation perplexity {ppl:.4g} at step {step} exceeded {bound} x unpruned "
                               f"{base:.4g}; rolled back to step {step - 1}")
                    log.warning("pruning schedule stopped: %s", stopped)
                    break
                kept = _snapshot(state.model)
            history.append(entry)
        bar.close()
    accepted = [h for h in history if not h.get("rolled_back")]
    result.update({"stopped": stopped, "completed_steps": len(accepted), "history": history})
    return result


# --- sensitivity -----------------------------------------------------------------------------------

def calibration_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4) -> float:
    """Mean next-token cross-entropy on ``windows`` (no grad)."""
    from slimkit.evaluation.metrics import mean_next_token_loss

    model.eval()
    return mean_next_token_loss(model, windows, batch_size)


def _blocks(names: Iterator[str]) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    for name in names:
        match = _BLOCK.match(name)
        blocks.setdefault(match.group(1) if match else name, []).append(name)
    return blocks


def sensitivity_scan(state, layers: Mapping[str, torch.nn.Module], scores: Mapping[str, torch.Tensor],
                     sparsities: List[float], windows: int = 4, scope: str = "layer",
                     out_dir: Optional[Path] = None, label: str = "") -> dict[str, Any]:
    """Prune one decoder block at a time to each of ``sparsities`` (others dense), measure the loss on
    ``windows`` calibration windows, restore the block. Writes ``sensitivity.json``, ``.csv`` and a
    ``.png`` plot into ``out_dir`` (default ``state.work_dir``) and returns the table."""
    scope = "layer" if scope == "global" else scope
    data = state.data.calibration[:windows]
    base = calibration_loss(state.model, data)
    blocks = _blocks(iter(layers))
    rows = []
    for block, names in tqdm(blocks.items(), desc="sensitivity scan", unit="block"):
        saved = {n: layers[n].weight.detach().clone() for n in names}
        for s in sparsities:
            apply_masks(layers, compute_masks({n: scores[n] for n in names}, {n: s for n in names}, scope))
            rows.append({"block": block, "sparsity": s, "loss": calibration_loss(state.model, data)})
            with torch.no_grad():
                for n in names:
                    layers[n].weight.copy_(saved[n])
    table = {"criterion": label, "scope": scope, "calibration_windows": int(data.shape[0]), "dense_loss": base,
             "rows": rows}
    out = Path(out_dir or state.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sensitivity.json").write_text(json.dumps(table, indent=1))
    with open(out / "sensitivity.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["block", "sparsity", "loss"])
        writer.writeheader()
        writer.writerows(rows)
    _plot(table, blocks, sparsities, out / "sensitivity.png")
    table["files"] = [str(out / f"sensitivity.{ext}") for ext in ("json", "csv", "png")]
    return table


def _plot(table: dict, blocks: Mapping[str, list[str]], sparsities: List[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    for i, block in enumerate(blocks):
        losses = [r["loss"] - table["dense_loss"] for r in table["rows"] if r["block"] == block]
        ax.plot(sparsities, losses, marker="o", color=cmap(i / max(len(blocks) - 1, 1)), lw=1,
                label=block if len(blocks) <= 8 else None)
    ax.set_xlabel("sparsity of this block (others dense)")
    ax.set_ylabel("calibration loss increase (nats)")
    ax.set_title(f"Per-block pruning sensitivity ({table['criterion'] or 'criterion'}, {table['scope']})")
    if len(blocks) <= 8:
        ax.legend(fontsize=7)
    else:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(blocks) - 1))
        fig.colorbar(sm, ax=ax, label="block index")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sensitivity_allocation(table: Mapping[str, Any], target: float, max_shift: float) -> dict[str, float]:
    """Per-block sparsity from a scan: rank blocks by loss increase at ``target`` (linear
    interpolation between scanned sparsities) and give them ``target + max_shift`` (least sensitive)
    down to ``target - max_shift`` (most sensitive), linearly by rank. With equal-size blocks the
    mean sparsity stays ``target``. A simple heuristic in the spirit of OWL (Yin et al. 2024), not a
    search."""
    import numpy as np

    by_block: dict[str, list[tuple[float, float]]] = {}
    for row in table["rows"]:
        by_block.setdefault(row["block"], []).append((row["sparsity"], row["loss"] - table["dense_loss"]))
    damage = {}
    for block, points in by_block.items():
        points.sort()
        damage[block] = float(np.interp(target, [p[0] for p in points], [p[1] for p in points]))
    ranked = sorted(damage, key=damage.get)  # least sensitive first
    n = len(ranked)
    return {block: min(max(target + max_shift * (1 - 2 * i / (n - 1) if n > 1 else 0.0), 0.0), 0.99)
            for i, block in enumerate(ranked)}


# --- the shared unstructured pruner -----------------------------------------------------------------

def _layer_targets(layers: Mapping[str, torch.nn.Module], cfg: PruningConfig) -> dict[str, float]:
    for glob in cfg.overrides:
        if not any(_matches(name, glob) for name in layers):
            raise ConfigError("pruner.overrides", glob, "a glob matching at least one pruned layer "
                              f"(e.g. {', '.join(list(layers)[:2])})", "it matches none")
    targets = {}
    for name in layers:
        targets[name] = next((s for glob, s in cfg.overrides.items() if _matches(name, glob)), cfg.sparsity)
    return targets


class UnstructuredPruner(Stage):
    """Base of unstructured pruners: subclasses set ``name``/``Config`` and implement :meth:`scores`.

    Handles layer selection, per-layer overrides, N:M patterns, the schedule, the sensitivity scan,
    the sparsity report, and writes the artifact with sparse storage (:mod:`slimkit.toolkit.storage`).
    """

    kind = Kind.PRUNER
    Config = PruningConfig
    zeroes_weights = True
    #: scores are computed in float32; the zeros are written in the model's own dtype
    supports = {"dtypes": frozenset({"float32", "bfloat16", "float16"}), "devices": frozenset({"cpu"})}
    #: True when a layer's scores depend on that layer alone (e.g. |w|): with the ``layer``/``row`` scopes its
    #: mask is then computed and applied one layer at a time, so no float copy of every weight is held at once
    layerwise_scores: ClassVar[bool] = False

    def scores(self, state, layers: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        """Importance of every weight of each layer ([out, in]); the lowest are zeroed."""
        raise NotImplementedError

    def apply(self, state) -> dict[str, Any]:
        cfg = self.config
        layers = select_modules(state.model, cfg.include, cfg.exclude, prefix="pruner")
        targets = _layer_targets(layers, cfg)
        nm = parse_pattern(cfg.pattern)
        metrics: dict[str, Any] = {"criterion": self.name, "scope": cfg.scope, "pattern": cfg.pattern}
        if cfg.sensitivity.scan or cfg.sensitivity.allocate:
            table = sensitivity_scan(state, layers, self.scores(state, layers), cfg.sensitivity.sparsities,
                                     cfg.sensitivity.windows, cfg.scope, label=self.name)
            metrics["sensitivity_files"] = table["files"]
            if cfg.sensitivity.allocate:
                per_block = sensitivity_allocation(table, cfg.sparsity, cfg.sensitivity.max_shift)
                blocks = _blocks(iter(layers))
                targets = {n: per_block[b] for b, names in blocks.items() for n in names}
                metrics["allocated_block_sparsity"] = {b: round(s, 4) for b, s in per_block.items()}

        def prune_to(fraction: float) -> dict[str, Any]:
            if self.layerwise_scores and cfg.scope != "global":  # same masks, one layer's scores at a time
                for name, layer in layers.items():
                    one = {name: layer}
                    apply_masks(one, compute_masks(self.scores(state, one), {name: targets[name] * fraction},
                                                   cfg.scope, nm))
                return sparsity_report(layers)
            masks = compute_masks(self.scores(state, layers), {n: t * fraction for n, t in targets.items()},
                                  cfg.scope, nm)
            apply_masks(layers, masks)
            return sparsity_report(layers)

        state.zero_masks = True  # recovery between schedule steps and any later training keep the zeros
        metrics["schedule"] = run_schedule(state, prune_to, cfg.schedule, desc=f"{self.name} pruning")
        metrics.update(sparsity_report(layers))
        from slimkit.models import count_parameters

        metrics["model_sparsity"] = metrics["zeroed_weights"] / count_parameters(state.model)
        if metrics["zeroed_weights"]:
            state.artifact_writer = self
        return metrics

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        """Config + a safetensors file with sparse tensors stored as bitmask + values."""
        from slimkit.toolkit.storage import save_sparse_model

        save_sparse_model(model, directory)

    @classmethod
    def load(cls, directory: Path, manifest: Mapping[str, Any]) -> torch.nn.Module:
        from slimkit.toolkit.storage import load_sparse_model

        return load_sparse_model(directory)

