"""Quantization helpers every quantizer backend shares: one mixed-precision config shape,
effective-bits accounting, a per-layer sensitivity scan and a budgeted bit allocation.

A backend opts in by deriving its ``Config`` from :class:`MixedPrecisionConfig` (setting
``ALLOWED_BITS``), by providing ``make_quantized(name, linear, bits) -> module`` (a quantized copy of
one float ``Linear``, leaving the original untouched) for the scan, and by applying the resulting
plan ``{module name: bits or None}`` (``None`` = keep float)::

    quantizer: quanto
    quantizer.bits: 4                                   # default bit-width of selected Linear modules
    quantizer.overrides: {lm_head: 8, "model.layers.0.*": 8, "model.layers.29.*": null}
    quantizer.exclude: [lm_head]                        # kept in float unless an override names them
    quantizer.budget_bits: 4.5                          # or: choose bit-widths from a sensitivity scan

On the command line a dict value needs Hydra's force-add prefix (the field starts empty and the
composed config is in struct mode): ``slimkit ++quantizer.overrides='{lm_head:8, model.layers.0.*:8}'``.

Resolution order: every ``Linear`` matching ``include`` and no ``exclude`` gets ``bits``; then each
``overrides`` glob, in order (later wins), sets the bit-width of every Linear it matches, excluded or
not (``null``/``"float"`` keeps it float). A glob that matches no Linear is an error naming it.

Budget mode (``budget_bits``) keeps the overrides fixed, scans the other selected modules (one
module or one decoder block at a time, at every candidate bit-width, measuring the change of the
next-token loss on the calibration slice) and solves the allocation as a multiple-choice knapsack by
dynamic programming (exact up to the cost rounding described in :func:`allocate_bits`). The scan
quantizes weights only; a backend's activation quantization is applied after the allocation. Losses
are assumed additive across units (checked on SmolLM2: one int2 block predicted +0.31 nats, measured
+0.33; see benchmarks/quantization.md).
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import functools
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch

from slimkit.core.errors import ConfigError, DataError
from slimkit.core.plugin import FLOAT_WORDS, QuantizerConfig, check_choice, check_range, parse_bits
from slimkit.evaluation.metrics import mean_next_token_loss
from slimkit.toolkit.modules import linear_types, select_modules

#: override values meaning "keep this module in float"
SCAN_UNITS = ("module", "block")
_BLOCK = re.compile(r"^(.*?\.(?:layers|h|blocks|layer)\.\d+)\.")

#: (module name, float Linear, bits) -> a quantized replacement module; the original must stay intact
MakeQuantized = Callable[[str, torch.nn.Module, int], torch.nn.Module]



@dataclasses.dataclass
class MixedPrecisionConfig(QuantizerConfig):
    """:class:`QuantizerConfig` plus per-module bit-widths chosen by a sensitivity scan under a budget,
    for backends that can do more than one bit-width (subclasses set ``ALLOWED_BITS``)."""

    #: average weight bits to reach by choosing per-module bit-widths from a sensitivity scan (null: off)
    budget_bits: Optional[float] = None
    #: bit-widths the budget allocator may choose (null: every width the backend can do)
    budget_candidates: Optional[List[int]] = None
    #: scan granularity: one Linear 'module' at a time, or one decoder 'block' at a time
    scan_unit: str = "module"
    #: calibration windows the scan evaluates the loss on (0: all of them)
    scan_windows: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("quantizer.scan_unit", self.scan_unit, SCAN_UNITS)
        check_range("quantizer.scan_windows", self.scan_windows, 0)
        if self.budget_candidates is not None:
            if not self.budget_candidates:
                raise ConfigError("quantizer.budget_candidates", self.budget_candidates,
                                  "a non-empty list drawn from " + ", ".join(map(str, self.ALLOWED_BITS)))
            for b in self.budget_candidates:
                check_choice("quantizer.budget_candidates", b, self.ALLOWED_BITS)
        if self.budget_bits is not None:
            lowest = min(self.candidates)
            if not (isinstance(self.budget_bits, (int, float)) and self.budget_bits >= lowest):
                raise ConfigError("quantizer.budget_bits", self.budget_bits,
                                  f"a number >= {lowest} (the lowest candidate bit-width of this backend: "
                                  f"{sorted(self.candidates)})", "no allocation can fit below it")

    @property
    def candidates(self) -> list[int]:
        """Bit-widths the budget allocator may choose."""
        return sorted(self.budget_candidates or self.ALLOWED_BITS)


# --- plans ----------------------------------------------------------------------------------------

def linear_modules(model: torch.nn.Module, types: Optional[tuple[type, ...]] = None) -> dict[str, torch.nn.Module]:
    """Every module of ``types`` (default: ``Linear`` and ``Conv1D``) by qualified name."""
    types = linear_types() if types is None else types
    return {name: m for name, m in model.named_modules() if isinstance(m, types)}


def resolve_plan(model: torch.nn.Module, cfg: MixedPrecisionConfig, prefix: str = "quantizer",
                 types: Optional[tuple[type, ...]] = None) -> dict[str, Optional[int]]:
    """``{name: bits or None}`` for every Linear, from ``include``/``exclude``/``bits``/``overrides``."""
    linears = linear_modules(model, types)
    selected = select_modules(model, cfg.include, cfg.exclude, types=types, prefix=prefix)
    plan: dict[str, Optional[int]] = {name: (cfg.bits if name in selected else None) for name in linears}
    for pattern, value in dict(cfg.overrides).items():
        matched = [name for name in linears if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            examples = ", ".join(list(linears)[:3])
            raise ConfigError(f"{prefix}.overrides", pattern, f"a glob matching at least one Linear module name "
                              f"(e.g. {examples})", "it matches none")
        bits = parse_bits(f"{prefix}.overrides[{pattern!r}]", value, cfg.ALLOWED_BITS)
        for name in matched:
            plan[name] = bits
    return plan


def overridden(plan_names: Sequence[str], cfg: MixedPrecisionConfig) -> set[str]:
    """Names some override pattern matches (fixed in budget mode)."""
    return {n for n in plan_names if any(fnmatch.fnmatchcase(n, p) for p in dict(cfg.overrides))}


def weight_count(module: torch.nn.Module) -> int:
    """Weights of a Linear (works for quantized replacements too)."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features) * int(module.out_features)
    return int(module.weight.numel())


def float_bits(module: torch.nn.Module) -> int:
    """Bits of the module's float weight dtype (fp32: 32, bf16/fp16: 16)."""
    dtype = getattr(module.weight, "dtype", torch.float32)
    return torch.finfo(dtype).bits if dtype.is_floating_point else 32


def precision_summary(model: torch.nn.Module, plan: Mapping[str, Optional[int]],
                      label: Callable[[int], str] = lambda bits: f"int{bits}") -> dict[str, Any]:
    """Effective average bits per weight over all Linear weights, float ones counted at their dtype's
    bits (32 for fp32, 16 for bf16/fp16), plus the per-module precision map (``label(bits)`` names a
    quantized format, e.g. ``int4`` or ``nf4``).

    Bits are nominal code bits: scales, zero-points and outlier columns are not counted. Call this
    on the float model, before the modules are replaced.
    """
    modules = dict(model.named_modules())
    total_bits = total = q_bits = q_total = 0
    precision: dict[str, str] = {}
    for name, bits in plan.items():
        m = modules[name]
        n = weight_count(m)
        b = bits if bits is not None else float_bits(m)
        total_bits += n * b
        total += n
        if bits is not None:
            q_bits += n * bits
            q_total += n
        precision[name] = label(bits) if bits is not None else f"float{float_bits(m)}"
    counts: dict[str, int] = {}
    for v in precision.values():
        counts[v] = counts.get(v, 0) + 1
    return {
        "effective_bits_per_weight": total_bits / total if total else 0.0,
        "effective_bits_note": "nominal code bits averaged over all Linear weights; float-kept weights count at "
                               "their dtype's bits (float32 = 32); scales/zero-points not counted",
        "quantized_bits_per_weight": q_bits / q_total if q_total else None,
        "linear_weights": total,
        "quantized_weight_fraction": q_total / total if total else 0.0,
        "precision_counts": counts,
        "precision_map": precision,
    }


# --- sensitivity scan -----------------------------------------------------------------------------

def unit_of(name: str, unit: str) -> str:
    """The scan unit a module belongs to: itself, or its decoder block (``model.layers.3``)."""
    if unit == "block":
        match = _BLOCK.match(name)
        if match:
            return match.group(1)
    return name


def group_units(names: Sequence[str], unit: str) -> dict[str, list[str]]:
    """Module names grouped by scan unit, in model order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(unit_of(name, unit), []).append(name)
    return groups


def swap_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> torch.nn.Module:
    """Put ``new`` where the submodule ``name`` was; return the old module."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def calibration_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4) -> float:
    """Mean next-token cross-entropy of ``model`` on ``windows`` (no_grad)."""
    return mean_next_token_loss(model, windows, batch_size)


def sensitivity_scan(model: torch.nn.Module, units: Mapping[str, Sequence[str]], candidates: Sequence[int],
                     make_quantized: MakeQuantized, windows: torch.Tensor, batch_size: int = 4,
                     desc: str = "sensitivity scan") -> dict[str, Any]:
    """Quantize one unit at a time at each candidate bit-width and measure the loss change.

    Returns ``{"base_loss", "rows": [{unit, modules, weights, bits, loss, delta_loss}]}``; the model
    is left exactly as it was.
    """
    from tqdm.auto import tqdm

    if windows.shape[0] == 0:
        raise DataError("the sensitivity scan needs calibration windows (data.calibration_samples >= 1)")
    model.eval()
    modules = dict(model.named_modules())
    base = calibration_loss(model, windows, batch_size)
    rows = []
    bar = tqdm(total=len(units) * len(candidates), desc=desc, leave=False, unit="eval")
    for unit, names in units.items():
        weights = sum(weight_count(modules[n]) for n in names)
        for bits in candidates:
            originals = {}
            try:
                for n in names:
                    originals[n] = swap_module(model, n, make_quantized(n, modules[n], bits))
                loss = calibration_loss(model, windows, batch_size)
            finally:
                for n, old in originals.items():
                    swap_module(model, n, old)
            rows.append({"unit": unit, "modules": len(names), "weights": weights, "bits": bits,
                         "loss": loss, "delta_loss": loss - base})
            bar.update(1)
    bar.close()
    return {"base_loss": base, "candidates": list(candidates), "rows": rows}


def write_scan(scan: Mapping[str, Any], directory: Path, stem: str = "sensitivity") -> dict[str, str]:
    """Write the scan as JSON, CSV and a heatmap PNG (units × bit-widths, Δloss); return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / f"{stem}.json", "csv": directory / f"{stem}.csv", "png": directory / f"{stem}.png"}
    paths["json"].write_text(json.dumps(scan, indent=1))
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["unit", "modules", "weights", "bits", "loss", "delta_loss"])
        writer.writeheader()
        writer.writerows(scan["rows"])
    _heatmap(scan, paths["png"])
    return {k: str(v) for k, v in paths.items()}


def _heatmap(scan: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    units = list(dict.fromkeys(r["unit"] for r in scan["rows"]))
    bits = list(scan["candidates"])
    grid = np.full((len(units), len(bits)), np.nan)
    for r in scan["rows"]:
        grid[units.index(r["unit"]), bits.index(r["bits"])] = r["delta_loss"]
    shown = np.log10(np.clip(grid, 1e-6, None))
    fig, ax = plt.subplots(figsize=(2.0 + 1.1 * len(bits), 1.5 + 0.16 * len(units)))
    image = ax.imshow(shown, aspect="auto", cmap="magma_r")
    ax.set_xticks(range(len(bits)), [f"int{b}" for b in bits])
    ax.set_yticks(range(len(units)), units, fontsize=max(3, min(8, 400 // max(len(units), 1))))
    ax.set_title(f"Δ loss when quantizing one unit (base loss {scan['base_loss']:.3f})")
    fig.colorbar(image, ax=ax, label="log10(max(Δloss, 1e-6))")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- budget allocation ----------------------------------------------------------------------------

def allocate_bits(weights: Mapping[str, int], delta: Mapping[tuple[str, int], float], candidates: Sequence[int],
                  budget_bits: float, fixed_weights: int = 0, fixed_bits: float = 0.0,
                  resolution: int = 20000) -> dict[str, int]:
    """Choose one bit-width per unit minimising the summed estimated loss increase
    ``Σ delta[(unit, bits)]`` subject to ``(Σ weights·bits + fixed_bits) / (Σ weights + fixed_weights)
    <= budget_bits``.

    A multiple-choice knapsack solved by dynamic programming over the extra cost above the
    all-lowest-width assignment. Integer costs are divided by their gcd and solved exactly (the usual
    case: layer sizes share large factors); otherwise costs are rounded *up* to ``capacity / resolution``
    quanta, so the result never exceeds the budget and is optimal up to that rounding. Raises :class:`ConfigError` if even the lowest widths
    do not fit.
    """
    import numpy as np

    units = list(weights)
    cands = sorted(candidates)
    low = cands[0]
    total = sum(weights.values()) + fixed_weights
    capacity = budget_bits * total - fixed_bits - sum(weights[u] * low for u in units)
    if capacity < -1e-9 * max(total, 1):
        floor = (fixed_bits + sum(weights[u] * low for u in units)) / total
        raise ConfigError("quantizer.budget_bits", budget_bits, f"a number >= {floor:.4g} (the overrides fixed in "
                          f"this model and int{low} everywhere else already average that)")
    if not units:
        return {}
    capacity = max(capacity, 0.0)
    # exact integer costs when possible: divide every extra cost by their gcd (real models' layer sizes
    # share large factors, so the scaled capacity stays small); otherwise round costs up to quanta
    extra = [weights[u] * (b - low) for u in units for b in cands]
    if all(float(c).is_integer() for c in extra) and any(extra):
        g = functools.reduce(math.gcd, (int(c) for c in extra if c))
        exact = capacity / g <= max(resolution, 2_000_000)
    else:
        g, exact = 1, False
    quantum = float(g) if exact else max(capacity / resolution, 1e-12)
    slots = int(math.floor(capacity / quantum + 1e-9))
    inf = float("inf")
    best = np.zeros(slots + 1)  # best[c]: min Σdelta over the units so far with extra cost <= c
    choices = []
    for u in units:
        new = np.full(slots + 1, inf)
        pick = np.zeros(slots + 1, dtype=np.int64)
        for i, b in enumerate(cands):
            cost = int(math.ceil(weights[u] * (b - low) / quantum - 1e-9))
            if cost > slots:
                continue
            cand = np.full(slots + 1, inf)
            cand[cost:] = best[: slots + 1 - cost] + delta[(u, b)]
            better = cand < new
            new[better] = cand[better]
            pick[better] = i
        choices.append(pick)
        best = new
    # walk back from the full capacity
    plan, c = {}, slots
    for u, pick in zip(reversed(units), reversed(choices)):
        b = cands[int(pick[c])]
        plan[u] = b
        c -= int(math.ceil(weights[u] * (b - low) / quantum - 1e-9))
    return {u: plan[u] for u in units}


# --- the whole planning step a backend calls ----------------------------------------------------

def plan_precision(state: Any, cfg: MixedPrecisionConfig, make_quantized: Optional[MakeQuantized] = None,
                   backend: str = "quantizer", types: Optional[tuple[type, ...]] = None,
                   label: Callable[[int], str] = lambda bits: f"int{bits}",
                   ) -> tuple[dict[str, Optional[int]], dict[str, Any]]:
    """Resolve the precision plan for ``state.model`` (running the scan and the allocator in budget
    mode) and return ``(plan, metrics)``; metrics hold the effective bits and the precision map."""
    model = state.model
    plan = resolve_plan(model, cfg, types=types)
    metrics: dict[str, Any] = {}
    if getattr(cfg, "budget_bits", None) is not None:
        if make_quantized is None:
            raise ConfigError("quantizer.budget_bits", cfg.budget_bits, f"null: the {backend} backend cannot scan")
        fixed_names = overridden(list(plan), cfg)
        modules = dict(model.named_modules())
        managed = [n for n, b in plan.items() if b is not None and n not in fixed_names]
        fixed = [n for n in fixed_names]
        fixed_w = sum(weight_count(modules[n]) for n in fixed)
        fixed_b = sum(weight_count(modules[n]) * (plan[n] if plan[n] is not None else float_bits(modules[n]))
                      for n in fixed)
        units = group_units(managed, cfg.scan_unit)
        windows = state.data.calibration
        if cfg.scan_windows:
            windows = windows[: cfg.scan_windows]
        scan = sensitivity_scan(model, units, cfg.candidates, make_quantized, windows,
                                desc=f"{backend} sensitivity scan ({cfg.scan_unit})")
        unit_weights = {u: sum(weight_count(modules[n]) for n in names) for u, names in units.items()}
        delta = {(r["unit"], r["bits"]): r["delta_loss"] for r in scan["rows"]}
        chosen = allocate_bits(unit_weights, delta, cfg.candidates, cfg.budget_bits, fixed_w, fixed_b)
        for u, names in units.items():
            for n in names:
                plan[n] = chosen[u]
        budget_total = sum(unit_weights.values()) + fixed_w
        reached = (sum(unit_weights[u] * chosen[u] for u in units) + fixed_b) / budget_total
        scan["allocation"] = chosen
        files = write_scan(scan, Path(state.work_dir) / f"{backend}_sensitivity")
        metrics["budget"] = {
            "budget_bits": cfg.budget_bits, "reached_bits": reached, "candidates": cfg.candidates,
            "allocator": "multiple-choice knapsack, dynamic programming (exact up to cost rounding)",
            "scope": "selected + overridden Linear weights (exclude-only float modules not counted)",
            "scan_unit": cfg.scan_unit, "scan_windows": int(windows.shape[0]), "base_loss": scan["base_loss"],
            "estimated_delta_loss": sum(delta[(u, chosen[u])] for u in units), "files": files,
        }
    metrics.update(precision_summary(model, plan, label))
    return plan, metrics


__all__ = [
    "FLOAT_WORDS", "MakeQuantized", "MixedPrecisionConfig", "SCAN_UNITS", "allocate_bits", "calibration_loss",
    "group_units", "linear_modules", "parse_bits", "plan_precision", "precision_summary", "resolve_plan",
    "sensitivity_scan", "unit_of", "weight_count", "write_scan",
]


# --- handing a quantized model to a runtime ------------------------------------------------------------

def backend_quantized(tensor: Any) -> bool:
    """A weight a slimkit backend holds quantized and that dequantizes itself (optimum-quanto's QTensor)."""
    return (isinstance(tensor, torch.Tensor) and type(tensor) not in (torch.Tensor, torch.nn.Parameter)
            and callable(getattr(tensor, "dequantize", None)))


def float_model(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """``model`` itself if its weights are plain tensors; else a float copy of the same architecture whose weights
    are the backend's values dequantized exactly (quanto's codes times scales), and how many were dequantized."""
    quantized = [name for name, p in model.named_parameters() if backend_quantized(p)]
    if not quantized:
        return model, 0
    from transformers import AutoModelForCausalLM

    clean = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in clean.named_parameters():
            source = model.get_parameter(name)
            param.copy_(source.dequantize() if backend_quantized(source) else source)
    return clean, len(quantized)
