"""The contract every slimkit backend passes, first-party or third-party.

Subclass it in the plugin's tests::

    from slimkit.testing import StageContract
    from my_plugin import MyQuantizer

    class TestMyQuantizer(StageContract):
        stage_cls = MyQuantizer
        configs = [{"bits": 8}, {"bits": 4}]   # each variant must pass every check

It checks that the plugin is discovered through its entry point, that its config round-trips
through Hydra's structured configs, that the model still runs after the stage, and that save →
reload gives the same logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from slimkit.core.plugin import Stage
from slimkit.core.registry import default_registry
from slimkit.evaluation import model_logits
from slimkit.pipeline.config import backend_node, stage_config
from slimkit.pipeline.runner import load, save_artifact, stage_record


class StageContract:
    """Shared checks for one backend; see the module docstring."""

    stage_cls: ClassVar[type[Stage]]
    #: config variants (keyword arguments of the backend's Config) to run every check with
    configs: ClassVar[list[dict[str, Any]]] = [{}]
    #: max |logit difference| allowed between the model in memory and its reloaded artifact
    reload_atol: ClassVar[float] = 1e-4
    #: keyword arguments for the tiny model (e.g. wider layers for backends with size limits)
    tiny_model_kwargs: ClassVar[dict[str, Any]] = {}

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

    def test_config_round_trips(self):
        from omegaconf import OmegaConf

        for values in self.configs:
            config = self.stage_cls.Config(**values)
            node = OmegaConf.merge(OmegaConf.structured(backend_node(self.stage_cls)), values)
            assert node.backend == self.stage_cls.name
            rebuilt = stage_config(self.stage_cls, node, self.stage_cls.kind.value)
            assert dataclasses.asdict(rebuilt) == dataclasses.asdict(config)
            yaml_round_trip = stage_config(self.stage_cls, OmegaConf.create(OmegaConf.to_yaml(node)), "x")
            assert dataclasses.asdict(yaml_round_trip) == dataclasses.asdict(config)

    def test_model_runs_and_reloads_with_same_logits(self, tmp_path):
        cls = self.stage_cls
        for i, values in enumerate(self.configs):
            state = self._state()
            stage = cls(cls.Config(**values))
            metrics = stage.apply(state)
            assert isinstance(metrics, dict)
            probe = state.data.eval[:2, :32]
            logits = model_logits(state.model, probe)
            assert logits.shape == (2, 32, state.model.config.vocab_size)
            assert torch.isfinite(logits).all(), f"{values}: non-finite logits after the stage"
            record = stage_record(default_registry().info(cls.kind, cls.name), stage)
            target = tmp_path / f"artifact-{i}"
            save_artifact(state, target, overwrite=False, records=[record], model_info={"name": "tiny"})
            reloaded = load(target)
            diff = (model_logits(reloaded, probe) - logits).abs().max().item()
            assert diff <= self.reload_atol, f"{values}: reloaded logits differ by {diff}"
