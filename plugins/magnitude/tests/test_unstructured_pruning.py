"""Shared pruning machinery: criteria, N:M masks, schedules with stop/rollback, sensitivity, config errors."""

import copy
import functools
import json
import math
from types import SimpleNamespace

import pytest
import torch

from slimkit.core.errors import ConfigError, DataError, StageOrderError
from slimkit.pipeline import resolve_stages
from slimkit.toolkit.pruning import (
    ScheduleConfig,
    compute_masks,
    ramp_fractions,
    run_schedule,
    sensitivity_allocation,
    sensitivity_scan,
    sparsity_report,
)
from slimkit.core.registry import default_registry
from slimkit.data import DataSplits
from slimkit.models import tiny_model
from slimkit.core.state import PipelineState
from slimkit_magnitude import MagnitudeConfig, MagnitudePruner
from slimkit_wanda import WandaConfig, WandaPruner

torch.set_num_threads(1)


@functools.lru_cache(maxsize=1)
def _shared_state():
    """The tiny random-init Llama with random token windows: these tests need shapes, not text (building
    ``slimkit.testing.tiny_state()``'s real-text splits takes 20-50 s on a busy machine)."""
    g = torch.Generator().manual_seed(0)
    data = DataSplits(train=torch.randint(0, 512, (24, 64), generator=g), eval=torch.randint(0, 512, (4, 64), generator=g),
                      seq_len=64, calibration_samples=4, info={"source": "random token ids"})
    model = tiny_model(0)
    return PipelineState(model, None, data, copy.deepcopy(model).requires_grad_(False), seed=0)


@pytest.fixture
def state(tmp_path):
    s = copy.deepcopy(_shared_state())
    s.work_dir = tmp_path
    return s


def _linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}


# --- criteria --------------------------------------------------------------------------------------

class Skewed(torch.nn.Module):
    """One Linear whose inputs 0-3 are huge and 4-7 tiny, while its weights on 0-3 are small."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 4, bias=False)
        with torch.no_grad():
            self.proj.weight[:, :4] = 0.1 * torch.tensor([1.0, -1.1, 1.2, -1.3])
            self.proj.weight[:, 4:] = torch.tensor([1.0, -1.1, 1.2, -1.3])
        self.register_buffer("scale", torch.tensor([100.0] * 4 + [0.01] * 4))

    def forward(self, input_ids, use_cache=False):
        x = (input_ids.float()[..., None] % 3 + 1) * self.scale
        return self.proj(x)


def _toy_state():
    return SimpleNamespace(model=Skewed(), data=SimpleNamespace(calibration=torch.randint(0, 10, (4, 16)),
                                                                 train=torch.randint(0, 10, (8, 16))),
                           recover=None, artifact_writer=None, seed=0)


@pytest.mark.parametrize("scope", ["row", "layer"])
def test_wanda_picks_other_weights_than_magnitude_when_activations_are_skewed(scope):
    kept = {}
    for cls in (MagnitudePruner, WandaPruner):
        toy = _toy_state()
        metrics = cls(cls.Config(sparsity=0.5, scope=scope, exclude=[])).apply(toy)
        assert metrics["sparsity"] == 0.5
        kept[cls.name] = toy.model.proj.weight != 0
    # magnitude keeps the large weights on the tiny inputs; wanda keeps the small weights on the huge inputs
    assert kept["magnitude"][:, 4:].all() and not kept["magnitude"][:, :4].any()
    assert kept["wanda"][:, :4].all() and not kept["wanda"][:, 4:].any()


def test_row_scope_prunes_each_output_row_equally(state):
    metrics = WandaPruner(WandaConfig(sparsity=0.5)).apply(state)
    for name, m in _linears(state.model).items():
        zeros_per_row = (m.weight == 0).sum(1)
        assert (zeros_per_row == m.in_features // 2).all(), name
    assert metrics["sparsity"] == pytest.approx(0.5)
    assert set(metrics["per_layer_sparsity"]) == set(_linears(state.model))
    assert state.artifact_writer is not None


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
@pytest.mark.parametrize("config_cls", [MagnitudeConfig, WandaConfig])
def test_sparsity_outside_zero_one_is_an_error(config_cls, bad):
    with pytest.raises(ConfigError, match="pruner.sparsity"):
        config_cls(sparsity=bad)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="pruner.scope"):
        WandaConfig(scope="global")  # wanda scores are not comparable across layers
    with pytest.raises(ConfigError, match="pruner.pattern"):
        MagnitudeConfig(pattern="4:2")
    with pytest.raises(ConfigError, match="pruner.pattern"):
        MagnitudeConfig(pattern="two of four")
    with pytest.raises(ConfigError, match="pruner.sparsity"):
        MagnitudeConfig(sparsity=0.3, pattern="2:4")  # 2:4 means 50%
    with pytest.raises(ConfigError, match="pruner.schedule.steps"):
        MagnitudeConfig(pattern="2:4", schedule={"steps": 3})
    with pytest.raises(ConfigError, match="pruner.schedule.ramp"):
        MagnitudeConfig(schedule={"ramp": "exponential"})
    with pytest.raises(ConfigError, match="pruner.schedule.stepz"):
        MagnitudeConfig(schedule={"stepz": 3})
    with pytest.raises(ConfigError, match="pruner.overrides"):
        MagnitudeConfig(overrides={"*.layers.0.*": 1.2})
    with pytest.raises(ConfigError, match="pruner.scope"):
        MagnitudeConfig(scope="global", overrides={"*.layers.0.*": 0.2})


def test_per_layer_overrides_and_unmatched_glob(state):
    metrics = MagnitudePruner(MagnitudeConfig(sparsity=0.5, overrides={"model.layers.0.*": 0.25})).apply(state)
    for name, s in metrics["per_layer_sparsity"].items():
        assert s == pytest.approx(0.25 if name.startswith("model.layers.0.") else 0.5, abs=1e-3), name
    with pytest.raises(ConfigError, match="pruner.overrides"):
        MagnitudePruner(MagnitudeConfig(overrides={"model.blocks.*": 0.2})).apply(copy.deepcopy(_shared_state()))


# --- N:M -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_nm_mask_keeps_exactly_n_per_group(n, m):
    scores = {"a": torch.rand(16, 64), "b": torch.rand(8, 32)}
    masks = compute_masks(scores, {"a": 0.0, "b": 0.0}, "layer", (n, m))
    for name, mask in masks.items():
        groups = mask.reshape(mask.shape[0], -1, m)
        assert (groups.sum(-1) == n).all()
        # the kept ones are the N largest of their group
        s = scores[name].reshape(mask.shape[0], -1, m)
        assert (s[groups].min() >= 0) and torch.equal(groups, s >= s.topk(n, dim=-1).values[..., -1:])


@pytest.mark.parametrize("cls", [MagnitudePruner, WandaPruner])
def test_two_four_pattern_on_the_model(state, cls):
    metrics = cls(cls.Config(sparsity=0.5, pattern="2:4")).apply(state)
    for name, m in _linears(state.model).items():
        groups = (m.weight != 0).reshape(m.out_features, -1, 4).sum(-1)
        assert (groups <= 2).all() and (groups == 2).float().mean() > 0.99, name
    assert metrics["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_nm_group_must_divide_input_width(state):
    with pytest.raises(ConfigError, match="pruner.pattern"):
        MagnitudePruner(MagnitudeConfig(sparsity=1 - 2 / 3, pattern="2:3")).apply(state)  # 64 inputs, groups of 3


# --- schedules -------------------------------------------------------------------------------------

def test_ramps():
    assert ramp_fractions(4, "linear") == [0.25, 0.5, 0.75, 1.0]
    cubic = ramp_fractions(4, "cubic")
    assert cubic[-1] == 1.0 and all(c > l for c, l in zip(cubic[:-1], [0.25, 0.5, 0.75]))
    assert ramp_fractions(1, "cubic") == [1.0]


def test_schedule_ramps_and_calls_recovery_between_steps(state):
    seen = []

    def fake_recover(s, steps):
        seen.append((steps, sparsity_report(_linears(s.model))["sparsity"], s.data.train.shape[0]))
        return {"steps": steps, "last_loss": 1.0}

    state.recover = fake_recover
    n_train = state.data.train.shape[0]
    cfg = MagnitudeConfig(sparsity=0.6, schedule={"steps": 3, "ramp": "linear", "recovery_steps": 5})
    metrics = MagnitudePruner(cfg).apply(state)
    assert [s[0] for s in seen] == [5, 5, 5]
    assert [round(s[1], 2) for s in seen] == [0.2, 0.4, 0.6]
    assert all(s[2] == n_train for s in seen)  # no stop criterion: nothing withheld
    assert metrics["schedule"]["stopped"] == "target reached" and metrics["schedule"]["completed_steps"] == 3
    assert metrics["sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_schedule_stops_and_rolls_back_past_the_perplexity_bound(state):
    layers = _linears(state.model)
    targets = []
    withheld = []

    def prune_to(fraction):
        targets.append(fraction)
        MagnitudePruner(MagnitudeConfig(sparsity=0.6 * fraction)).apply(state)
        if len(targets) == 3:  # the third step wrecks the model
            with torch.no_grad():
                state.model.model.embed_tokens.weight.mul_(50).add_(torch.randn_like(state.model.model.embed_tokens.weight))
        return sparsity_report(layers)

    def recover(s, steps):
        withheld.append(s.data.train.shape[0])
        return {}

    state.recover = recover
    n_train = state.data.train.shape[0]
    schedule = ScheduleConfig(steps=4, ramp="linear", recovery_steps=1, max_perplexity_ratio=1.5, validation_windows=4)
    result = run_schedule(state, prune_to, schedule)
    assert len(targets) == 3  # stopped at step 3, never tried step 4
    assert result["completed_steps"] == 2 and result["history"][-1]["rolled_back"]
    assert "rolled back to step 2" in result["stopped"]
    assert result["history"][1]["ratio"] <= 1.5 < result["history"][2]["ratio"]
    # the model is back at step 2: 0.6 * 0.5 sparsity, embedding intact
    assert sparsity_report(layers)["sparsity"] == pytest.approx(0.3, abs=1e-3)
    assert torch.equal(state.model.model.embed_tokens.weight, _shared_state().model.model.embed_tokens.weight)
    # validation windows were withheld from recovery while the schedule ran, and given back afterwards
    assert withheld == [n_train - 4] * 3 and state.data.train.shape[0] == n_train


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.999])
def test_a_stop_criterion_that_fires_at_step_zero_is_an_error_before_work(ratio):
    with pytest.raises(ConfigError, match="max_perplexity_ratio"):
        MagnitudeConfig(schedule={"max_perplexity_ratio": ratio})
    cfg = {"pipeline": {"order": ["pruner", "distiller", "quantizer"]},
           "pruner": {"backend": "wanda", "schedule": {"max_perplexity_ratio": ratio}}}
    with pytest.raises(ConfigError, match="max_perplexity_ratio"):
        resolve_stages(cfg, default_registry())  # the pipeline's check, before any model is loaded


def test_validation_slice_too_large_is_a_data_error(state):
    cfg = MagnitudeConfig(schedule={"max_perplexity_ratio": 2.0, "validation_windows": state.data.train.shape[0]})
    with pytest.raises(DataError, match="validation_windows"):
        MagnitudePruner(cfg).apply(state)


def test_pruning_after_quantization_is_a_stage_order_error():
    cfg = {"pipeline": {"order": ["quantizer", "pruner"]}, "quantizer": {"backend": "quanto"},
           "pruner": {"backend": "wanda", "sparsity": 0.5}}
    with pytest.raises(StageOrderError, match="pruner"):
        resolve_stages(cfg, default_registry())
    cfg["pipeline"]["order"] = ["pruner", "quantizer"]
    assert [type(s).__name__ for s, _ in resolve_stages(cfg, default_registry())] == ["WandaPruner", "QuantoQuantizer"]


# --- sensitivity -----------------------------------------------------------------------------------

def test_sensitivity_scan_writes_files_and_restores_weights(state, tmp_path):
    layers = _linears(state.model)
    before = {n: m.weight.clone() for n, m in layers.items()}
    scores = {n: m.weight.abs() for n, m in layers.items()}
    table = sensitivity_scan(state, layers, scores, [0.3, 0.8], windows=2, out_dir=tmp_path, label="magnitude")
    assert len(table["rows"]) == 4 * 2  # 4 decoder blocks x 2 sparsities
    assert {r["block"] for r in table["rows"]} == {f"model.layers.{i}" for i in range(4)}
    assert all(math.isfinite(r["loss"]) for r in table["rows"])
    assert all(torch.equal(before[n], m.weight) for n, m in layers.items())
    for ext in ("json", "csv", "png"):
        assert (tmp_path / f"sensitivity.{ext}").stat().st_size > 0
    assert json.loads((tmp_path / "sensitivity.json").read_text())["rows"] == table["rows"]


def test_sensitivity_allocation_keeps_the_mean_and_spares_sensitive_blocks():
    rows = [{"block": b, "sparsity": s, "loss": 1.0 + s * k} for b, k in (("a", 1), ("b", 5), ("c", 2)) for s in (0.3, 0.7)]
    alloc = sensitivity_allocation({"dense_loss": 1.0, "rows": rows}, target=0.5, max_shift=0.1)
    assert alloc == pytest.approx({"a": 0.6, "c": 0.5, "b": 0.4})


def test_sensitivity_guided_pruning_through_the_config(state):
    cfg = WandaConfig(sparsity=0.5, sensitivity={"allocate": True, "sparsities": [0.4, 0.8], "windows": 2,
                                                  "max_shift": 0.1})
    metrics = WandaPruner(cfg).apply(state)
    alloc = metrics["allocated_block_sparsity"]
    assert sorted(alloc.values()) == pytest.approx([0.4, 0.4 + 0.2 / 3, 0.6 - 0.2 / 3, 0.6], abs=1e-4)
    assert metrics["sparsity"] == pytest.approx(0.5, abs=5e-3)
    assert (state.work_dir / "sensitivity.png").is_file()


def test_pruned_zeros_are_positive_zeros(state):
    """-0.0 would be stored as a value by bit-exact storage; masks write +0.0."""
    MagnitudePruner(MagnitudeConfig(sparsity=0.5)).apply(state)
    for name, m in _linears(state.model).items():
        zeros = m.weight[m.weight == 0]
        assert zeros.numel() and not torch.signbit(zeros).any(), name


@pytest.mark.parametrize("preset,backend", [("wanda_2of4", "wanda"), ("magnitude_iterative", "magnitude"),
                                            ("wanda_sensitivity", "wanda")])
def test_presets_compose_into_valid_configs(preset, backend):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from slimkit.pipeline.config import register_configs

    register_configs()
    with initialize_config_module("slimkit.conf", version_base=None):
        cfg = compose("config", overrides=[f"pruner={preset}"])
    stage, info = resolve_stages(OmegaConf.to_container(cfg, resolve=True), default_registry())[0]
    assert info.name == backend and stage.config.sparsity == 0.5


def test_unstructured_pruning_marks_its_zeros_as_masks_for_later_training(state):
    assert state.zero_masks is False
    MagnitudePruner(MagnitudeConfig(sparsity=0.3)).apply(state)
    assert state.zero_masks is True
