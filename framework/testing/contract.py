"""The contract every slimkit backend passes, first-party or third-party.

Subclass it in the plugin's tests::

    from slimkit.testing import StageContract
    from my_plugin import MyQuantizer

    class TestMyQuantizer(StageContract):
        stage_cls = MyQuantizer
        configs = [{"bits": 8}, {"bits": 4}]          # each variant is its own test of every check
        invalid_values = {"group_size": [0, 7]}        # extra values this backend's Config must reject

Each config variant becomes separate tests (``test_...[bits=4]``). The contract checks that the plugin
is discovered through its entry point; that its config round-trips through Hydra's structured configs;
that every declared range and choice (the kind's base config fields, ``ALLOWED_BITS``/``ACTIVATIONS``,
fields declared with :func:`slimkit.core.plugin.ranged`/``choice``, and ``invalid_values``) rejects a
value outside it with a :class:`ConfigError` naming the key; that ``apply`` changes the model (a stage
whose class sets ``noop = True`` is exempt; variants listed in ``unchanged_configs`` must leave it
unchanged); that the model still runs; and that save → reload gives the same logits through the
pipeline's own writer (an unfaithful save — e.g. a stage that changes weights in a way
``save_pretrained`` cannot write and forgets ``state.artifact_writer`` — fails here).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pytest
import torch

from slimkit.core.errors import ConfigError, UnknownPluginError
from slimkit.core.plugin import DistillerConfig, PrunerConfig, QuantizerConfig, Stage, StageConfig
from slimkit.core.registry import PluginInfo, default_registry
from slimkit.evaluation import model_logits
from slimkit.pipeline.config import backend_node, stage_config
from slimkit.pipeline.runner import load, save_artifact, stage_record


def _variant_id(values: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items()) or "defaults"


def outside_values(config_cls: type[StageConfig]) -> list[tuple[str, Any]]:
    """(field, value) pairs that the config's declared ranges and choices must reject."""
    bad: list[tuple[str, Any]] = []
    names = {f.name for f in dataclasses.fields(config_cls)}
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        if "range" in meta:
            low, high, low_open, high_open = meta["range"]
            if low is not None:
                bad.append((f.name, low if low_open else low - 1))
            if high is not None:
                bad.append((f.name, high if high_open else high + 1))
        if "choices" in meta:
            bad.append((f.name, "not-a-choice"))
    if issubclass(config_cls, QuantizerConfig):
        bad.append(("bits", max(config_cls.ALLOWED_BITS) + 1))
        bad.append(("activations", "int3-everything"))
    if issubclass(config_cls, PrunerConfig):
        bad += [("sparsity", 1.0), ("sparsity", -0.1)]
    if issubclass(config_cls, DistillerConfig):
        bad += [("temperature", 0.0), ("alpha", 1.5)]
    return [(name, value) for name, value in bad if name in names]


def _fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    return {"tensors": state, "modules": [(n, type(m).__name__) for n, m in model.named_modules()]}


def _changed(before: dict[str, Any], model: torch.nn.Module) -> bool:
    after = _fingerprint(model)
    if before["modules"] != after["modules"] or before["tensors"].keys() != after["tensors"].keys():
        return True
    return any(a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b)
               for a, b in ((before["tensors"][k], after["tensors"][k]) for k in before["tensors"]))


class StageContract:
    """Shared checks for one backend; see the module docstring."""

    stage_cls: ClassVar[type[Stage]]
    #: config variants (keyword arguments of the backend's Config); each must pass every check
    configs: ClassVar[list[dict[str, Any]]] = [{}]
    #: config variants that must leave the model exactly as it was (e.g. sparsity 0)
    unchanged_configs: ClassVar[list[dict[str, Any]]] = []
    #: field -> values the backend's Config must reject with a ConfigError naming the field
    invalid_values: ClassVar[dict[str, list[Any]]] = {}
    #: max |logit difference| allowed between the model in memory and its reloaded artifact
    reload_atol: ClassVar[float] = 1e-4
    #: keyword arguments for the tiny model (e.g. wider layers for backends with size limits)
    tiny_model_kwargs: ClassVar[dict[str, Any]] = {}

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """Each config variant (and each value to reject) is its own test."""
        cls = metafunc.cls
        if "values" in metafunc.fixturenames:
            variants = list(cls.configs) + list(cls.unchanged_configs)
            metafunc.parametrize("values", variants, ids=[_variant_id(v) for v in variants])
        if "bad" in metafunc.fixturenames:
            bad = outside_values(cls.stage_cls.Config)
            bad += [(name, value) for name, values in cls.invalid_values.items() for value in values]
            metafunc.parametrize("bad", bad, ids=[f"{n}={v!r}" for n, v in bad])

    def _state(self):
        from slimkit.testing.states import tiny_state

        return tiny_state(**self.tiny_model_kwargs)

    def test_discovered_through_entry_point(self):
        cls = self.stage_cls
        registry = default_registry()
        assert cls.name in registry.names(cls.kind), f"{cls.name} is not registered under {cls.kind.entry_point_group}"
        assert registry.get(cls.kind, cls.name) is cls
        info = registry.info(cls.kind, cls.name)
        assert info.distribution != "unknown" and info.version != "unknown"

    def test_dependencies_import(self):
        self.stage_cls.check_dependencies()

    def test_config_round_trips(self, values):
        from omegaconf import OmegaConf

        config = self.stage_cls.Config(**values)
        node = OmegaConf.merge(OmegaConf.structured(backend_node(self.stage_cls)), values)
        assert node.backend == self.stage_cls.name
        rebuilt = stage_config(self.stage_cls, node, self.stage_cls.kind.value)
        assert dataclasses.asdict(rebuilt) == dataclasses.asdict(config)
        yaml_round_trip = stage_config(self.stage_cls, OmegaConf.create(OmegaConf.to_yaml(node)), "x")
        assert dataclasses.asdict(yaml_round_trip) == dataclasses.asdict(config)

    def test_rejects_values_outside_its_ranges(self, bad):
        name, value = bad
        with pytest.raises(ConfigError) as info:
            self.stage_cls.Config(**{name: value})
        assert info.value.key.split(".")[-1].split("[")[0] == name, \
            f"{name}={value!r} was rejected, but the error names {info.value.key!r}"

    def test_unknown_key_is_rejected(self):
        node = {"backend": self.stage_cls.name, "no_such_knob": 1}
        with pytest.raises(ConfigError) as info:
            stage_config(self.stage_cls, node, self.stage_cls.kind.value)
        assert "no_such_knob" in info.value.key

    def test_changes_the_model_runs_and_reloads_with_same_logits(self, values, tmp_path):
        cls = self.stage_cls
        state = self._state()
        before = _fingerprint(state.model)
        stage = cls(cls.Config(**values))
        metrics = stage.apply(state)
        assert isinstance(metrics, dict)
        changed = _changed(before, state.model)
        if values in self.unchanged_configs:
            assert not changed, f"{values}: declared unchanged, but apply changed the model"
        elif not cls.noop:
            assert changed, f"{values}: apply left the model exactly as it was (a no-op stage must set noop = True)"
        probe = state.data.eval[:2, :32]
        logits = model_logits(state.model, probe)
        assert logits.shape == (2, 32, state.model.config.vocab_size)
        assert torch.isfinite(logits).all(), f"{values}: non-finite logits after the stage"
        try:
            info = default_registry().info(cls.kind, cls.name)
        except UnknownPluginError:  # a stage under development: the discovery test reports that separately
            info = PluginInfo(cls.kind, cls.name, f"{cls.__module__}:{cls.__qualname__}", "unregistered", "0")
        record = stage_record(info, stage)
        target = tmp_path / "artifact"
        save_artifact(state, target, overwrite=False, records=[record], model_info={"name": "tiny"}, probe=probe)
        reloaded = load(target)
        diff = (model_logits(reloaded, probe) - logits).abs().max().item()
        assert diff <= self.reload_atol, f"{values}: reloaded logits differ by {diff}"
