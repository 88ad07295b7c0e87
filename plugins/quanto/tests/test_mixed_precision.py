"""Shared quantization helpers: override resolution, effective bits, the sensitivity scan, the
budget allocator, budget mode through the quanto and bnb backends, and bad input."""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import itertools
import json
from typing import ClassVar

import pytest
import torch

import slimkit
from slimkit import ConfigError, MissingDependencyError, default_registry
from slimkit.toolkit.quantization import (
    MixedPrecisionConfig,
    allocate_bits,
    group_units,
    precision_summary,
    resolve_plan,
    sensitivity_scan,
    write_scan,
)
from slimkit.testing import tiny_state


@dataclasses.dataclass
class ToyConfig(MixedPrecisionConfig):
    ALLOWED_BITS: ClassVar[tuple[int, ...]] = (2, 4, 8)


class Toy(torch.nn.Module):
    """Three Linear layers of different sizes plus a non-Linear module."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(10, 10)       # 100 weights
        self.b = torch.nn.Linear(10, 30)       # 300 weights
        self.head = torch.nn.Linear(30, 20)    # 600 weights
        self.norm = torch.nn.LayerNorm(10)


@functools.lru_cache(maxsize=1)
def _cached_state():
    return tiny_state()


def fresh_state(tmp_path=None):
    state = copy.deepcopy(_cached_state())
    if tmp_path is not None:
        state.work_dir = tmp_path
    return state


# --- overrides and effective bits ---------------------------------------------------------------

def test_overrides_resolve_in_order_and_effective_bits_arithmetic():
    model = Toy()
    cfg = ToyConfig(bits=4, exclude=["head"], overrides={"b": 8, "*a": "float"})
    plan = resolve_plan(model, cfg)
    assert plan == {"a": None, "b": 8, "head": None}
    summary = precision_summary(model, plan)
    # a: 100 × 32 (fp32 kept), b: 300 × 8, head: 600 × 32 (excluded) → (3200 + 2400 + 19200) / 1000
    assert summary["effective_bits_per_weight"] == pytest.approx(24.8)
    assert summary["quantized_bits_per_weight"] == pytest.approx(8.0)
    assert summary["precision_map"] == {"a": "float32", "b": "int8", "head": "float32"}
    assert summary["linear_weights"] == 1000

    plan = resolve_plan(model, ToyConfig(bits=2, exclude=[], overrides={"head": 4}))
    # 100 × 2 + 300 × 2 + 600 × 4 = 3200 bits over 1000 weights
    assert precision_summary(model, plan)["effective_bits_per_weight"] == pytest.approx(3.2)


def test_float_kept_bf16_weights_count_16_bits():
    model = Toy().to(torch.bfloat16)
    plan = resolve_plan(model, ToyConfig(bits=8, exclude=["head"]))
    # 400 × 8 + 600 × 16 over 1000
    assert precision_summary(model, plan)["effective_bits_per_weight"] == pytest.approx(12.8)


def test_override_pattern_typo_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"quantizer\.overrides='model\.layerz\.\*'.*matches none"):
        resolve_plan(Toy(), ToyConfig(exclude=[], overrides={"model.layerz.*": 8}))
    with pytest.raises(ConfigError, match=r"quantizer\.exclude='hed'"):
        resolve_plan(Toy(), ToyConfig(exclude=["hed"]))


@pytest.mark.parametrize("value", [3, 16, "int4", 4.5, True])
def test_override_bits_outside_backend_are_rejected(value):
    with pytest.raises(ConfigError, match="quantizer.overrides"):
        ToyConfig(overrides={"a": value})


def test_budget_below_lowest_bits_rejected_at_config_time():
    with pytest.raises(ConfigError, match=r"quantizer\.budget_bits=1\.5.*>= 2"):
        ToyConfig(budget_bits=1.5)
    with pytest.raises(ConfigError, match=r"quantizer\.budget_bits=3\.0.*>= 4"):
        ToyConfig(budget_bits=3.0, budget_candidates=[4, 8])
    ToyConfig(budget_bits=2.0)  # exactly the lowest width is allowed


def test_budget_too_low_fails_before_the_model_loads(tiny_cfg, monkeypatch, tmp_path):
    from slimkit.pipeline import runner as pipeline

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the config error")

    monkeypatch.setattr(pipeline, "load_model", no_model)
    with pytest.raises(ConfigError, match="quantizer.budget_bits"):
        slimkit.run(tiny_cfg("quantizer=bnb", "quantizer.budget_bits=3.5"), tmp_path)


def test_missing_dependency_names_the_pip_hint(monkeypatch):
    for name, hint in (("quanto", "pip install optimum-quanto"), ("bnb", "pip install bitsandbytes")):
        cls = default_registry().get(slimkit.Kind.QUANTIZER, name)
        monkeypatch.setattr(cls, "requires", {"not_a_module_xyz": hint})
        with pytest.raises(MissingDependencyError, match=hint) as info:
            cls.check_dependencies()
        assert info.value.backend == name and info.value.hint == hint


# --- the allocator ------------------------------------------------------------------------------

def _brute_force(weights, delta, cands, budget):
    best, best_plan = float("inf"), None
    units = list(weights)
    total = sum(weights.values())
    for combo in itertools.product(cands, repeat=len(units)):
        if sum(weights[u] * b for u, b in zip(units, combo)) > budget * total + 1e-9:
            continue
        cost = sum(delta[(u, b)] for u, b in zip(units, combo))
        if cost < best:
            best, best_plan = cost, dict(zip(units, combo))
    return best, best_plan


def test_allocator_finds_the_known_optimum():
    # "big" is insensitive, "small" very sensitive: at 5 bits average the optimum spends bits on "small"
    weights = {"big": 300, "mid": 100, "small": 100}
    delta = {("big", 2): 0.05, ("big", 4): 0.01, ("big", 8): 0.0,
             ("mid", 2): 0.30, ("mid", 4): 0.05, ("mid", 8): 0.0,
             ("small", 2): 2.00, ("small", 4): 0.50, ("small", 8): 0.0}
    plan = allocate_bits(weights, delta, [2, 4, 8], budget_bits=4.0)
    # options within 2000 bits: big2/mid4/small8 = 600+400+800 = 1800 bits, Δ 0.10 (best)
    assert plan == {"big": 2, "mid": 4, "small": 8}
    assert _brute_force(weights, delta, [2, 4, 8], 4.0)[1] == plan


def test_allocator_matches_brute_force_on_random_tables():
    gen = torch.Generator().manual_seed(0)
    for trial in range(25):
        n = int(torch.randint(2, 6, (1,), generator=gen))
        weights = {f"u{i}": int(torch.randint(1, 50, (1,), generator=gen)) for i in range(n)}
        cands = [2, 4, 8]
        delta = {}
        for u in weights:
            d = sorted(torch.rand(3, generator=gen).tolist(), reverse=True)
            delta.update({(u, b): v for b, v in zip(cands, d)})
        budget = 2 + 6 * float(torch.rand(1, generator=gen))
        best, _ = _brute_force(weights, delta, cands, budget)
        plan = allocate_bits(weights, delta, cands, budget)
        assert sum(weights[u] * plan[u] for u in weights) <= budget * sum(weights.values()) + 1e-9
        assert sum(delta[(u, plan[u])] for u in weights) == pytest.approx(best), f"trial {trial}"


def test_allocator_is_exact_when_the_budget_equals_a_uniform_width():
    # regression: rounding every cost up once made uniform int4 "infeasible" at a 4.0-bit budget,
    # demoting a block to int2 (seen on SmolLM2: 30 blocks of 3,538,944 weights)
    weights = {f"model.layers.{i}": 3_538_944 for i in range(30)}
    delta = {(u, b): {2: 0.3 + i / 100, 4: 0.01, 8: 0.0}[b] for i, u in enumerate(weights) for b in (2, 4, 8)}
    assert set(allocate_bits(weights, delta, [2, 4, 8], 4.0).values()) == {4}
    plan = allocate_bits(weights, {**delta, ("model.layers.7", 4): 0.5}, [4, 8], 4 + 4 / 30)
    assert plan["model.layers.7"] == 8 and sum(b == 8 for b in plan.values()) == 1


def test_allocator_respects_budget_with_rounded_costs_and_fixed_modules():
    weights = {f"u{i}": 100_003 + i for i in range(40)}
    delta = {(u, b): (1.0 / b) * (1 + i) for i, u in enumerate(weights) for b in (2, 4, 8)}
    plan = allocate_bits(weights, delta, [2, 4, 8], 4.5, fixed_weights=500_000, fixed_bits=500_000 * 8.0,
                         resolution=1000)
    total_bits = sum(weights[u] * plan[u] for u in weights) + 500_000 * 8
    assert total_bits / (sum(weights.values()) + 500_000) <= 4.5
    with pytest.raises(ConfigError, match="quantizer.budget_bits"):
        allocate_bits(weights, delta, [2, 4, 8], 2.5, fixed_weights=10**7, fixed_bits=10**7 * 32.0)


# --- scan and budget mode on the tiny model -----------------------------------------------------

def _quanto_make(name, module, bits):
    from slimkit_quanto import make_quantized

    return make_quantized(name, module, bits)


def test_scan_writes_table_csv_and_heatmap_and_leaves_model_unchanged(tmp_path):
    state = fresh_state(tmp_path)
    probe = state.data.eval[:1, :16]
    before = state.model(input_ids=probe).logits
    names = [n for n, m in state.model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    units = group_units(names, "block")
    assert list(units) == [f"model.layers.{i}" for i in range(4)]
    scan = sensitivity_scan(state.model, units, [2, 8], _quanto_make, state.data.calibration[:2])
    assert torch.equal(state.model(input_ids=probe).logits, before)
    assert len(scan["rows"]) == 8
    by = {(r["unit"], r["bits"]): r["delta_loss"] for r in scan["rows"]}
    assert all(abs(by[(u, 8)]) < abs(by[(u, 2)]) for u in units), "int2 should hurt more than int8"
    files = write_scan(scan, tmp_path / "scan")
    assert json.loads(open(files["json"]).read())["rows"] == scan["rows"]
    with open(files["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and set(rows[0]) == {"unit", "modules", "weights", "bits", "loss", "delta_loss"}
    assert open(files["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("backend, values", [
    ("quanto", {"budget_bits": 5.0, "scan_unit": "block"}),
    ("bnb", {"budget_bits": 6.0, "scan_unit": "block", "overrides": {"model.layers.0.*": 8}}),
])
def test_budget_mode_meets_budget_and_applies_plan(tmp_path, backend, values):
    cls = default_registry().get(slimkit.Kind.QUANTIZER, backend)
    state = fresh_state(tmp_path)
    metrics = cls(cls.Config(**values)).apply(state)
    budget = metrics["budget"]
    assert budget["reached_bits"] <= values["budget_bits"] + 1e-9
    bits = sorted({v for k, v in metrics["precision_map"].items() if k != "lm_head"})
    assert len(bits) >= 1 and all(b in {"int2", "int4", "int8", "nf4"} for b in bits)
    for path in budget["files"].values():
        assert (tmp_path / f"{backend}_sensitivity").exists() and open(path, "rb").read(1)
    if backend == "bnb":
        assert all(v == "int8" for k, v in metrics["precision_map"].items() if k.startswith("model.layers.0."))
    # the quantized weights really follow the plan
    n_int8 = sum(1 for v in metrics["precision_map"].values() if v == "int8")
    assert metrics["precision_counts"].get("int8", 0) == n_int8


def test_stage_metrics_in_report_show_effective_bits_and_map(tiny_cfg, tmp_path):
    report = slimkit.run(tiny_cfg("~pruner", "quantizer.bits=4", "eval.latency=false",
                                  "++quantizer.overrides={lm_head:8, model.layers.0.*:8}"), tmp_path)
    metrics = json.loads((tmp_path / "report.json").read_text())["stages"][0]["metrics"]
    assert metrics["precision_map"]["lm_head"] == "int8"
    assert metrics["precision_map"]["model.layers.1.mlp.up_proj"] == "int4"
    # tiny model: 4 layers × (4096·2 + 2048·2 + 8192·3) attention+MLP weights, lm_head 512×64
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3
    expected = (per_layer * 8 + 3 * per_layer * 4 + 512 * 64 * 8) / (4 * per_layer + 512 * 64)
    assert metrics["effective_bits_per_weight"] == pytest.approx(expected)
    assert report["final"]["reload_max_abs_logit_diff"] <= 1e-4


@pytest.mark.parametrize("preset", ["quanto_w4_mixed", "quanto_budget", "quanto_w8a8", "bnb_nf4", "bnb_int8"])
def test_presets_compose_into_valid_backend_configs(preset):
    from slimkit.testing.config import compose
    from slimkit.pipeline.config import stage_config

    cfg = compose(f"quantizer={preset}")
    cls = default_registry().get(slimkit.Kind.QUANTIZER, cfg.quantizer.backend)
    config = stage_config(cls, cfg.quantizer, "quantizer")
    assert isinstance(config, MixedPrecisionConfig)
