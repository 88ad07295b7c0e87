"""The contract every exporter plugin passes, first-party or third-party.

Subclass it in the plugin's tests::

    from slimkit.testing import ExporterContract
    from my_exporter import MyExporter

    class TestMyExporter(ExporterContract):
        exporter_cls = MyExporter
        configs = [{"weights": "auto"}, {"weights": "int8"}]
        tolerances = {"auto": 1e-4, "int8": 0.05}    # max |Δlogit| against PyTorch, per weight format
        bad_weights = "int3"                         # a format the exporter must refuse

It checks that the exporter is discovered through its entry point, that its config round-trips
through Hydra's structured configs, that it refuses a bad weight format with a ConfigError, and that
the tiny model exported → reopened in the runtime gives logits within the format's documented
tolerance of PyTorch's, and greedy generation that returns the tokens asked for.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from slimkit.core.errors import ConfigError
from slimkit.core.plugin import Exporter, Kind
from slimkit.core.registry import default_registry
from slimkit.deploy.plan import exporter_config
from slimkit.evaluation import model_logits
from slimkit.pipeline.config import backend_node
from slimkit.pipeline.runner import save_artifact


class ExporterContract:
    """Shared checks for one exporter; see the module docstring."""

    exporter_cls: ClassVar[type[Exporter]]
    #: config variants (keyword arguments of the exporter's Config) to run every check with
    configs: ClassVar[list[dict[str, Any]]] = [{}]
    #: max |logit difference| against PyTorch on the tiny model, by the config's ``weights`` value
    tolerances: ClassVar[dict[str, float]] = {"auto": 1e-4}
    #: a ``weights`` value the exporter must refuse
    bad_weights: ClassVar[str] = "int3-not-a-format"
    #: keyword arguments for the tiny model
    tiny_model_kwargs: ClassVar[dict[str, Any]] = {}

    def _state(self):
        from slimkit.testing.states import random_token_state

        if self.tiny_model_kwargs:
            from slimkit.models import tiny_model

            state = random_token_state()
            state.model = tiny_model(0, **self.tiny_model_kwargs)
            return state
        return random_token_state()

    def test_discovered_through_entry_point(self):
        cls = self.exporter_cls
        registry = default_registry()
        assert cls.kind is Kind.EXPORTER
        assert cls.name in registry.names(Kind.EXPORTER), f"{cls.name} is not registered under slimkit.exporters"
        assert registry.get(Kind.EXPORTER, cls.name) is cls
        info = registry.info(Kind.EXPORTER, cls.name)
        assert info.distribution != "unknown" and info.version != "unknown"
        assert cls.runtime, "an exporter names the runtime that serves its files"

    def test_dependencies_import(self):
        self.exporter_cls.check_dependencies()

    def test_config_round_trips(self):
        from omegaconf import OmegaConf

        for values in self.configs:
            config = self.exporter_cls.Config(**values)
            node = OmegaConf.merge(OmegaConf.structured(backend_node(self.exporter_cls)), values)
            assert node.backend == self.exporter_cls.name
            rebuilt = exporter_config(self.exporter_cls, OmegaConf.to_container(node), "exporter")
            assert dataclasses.asdict(rebuilt) == dataclasses.asdict(config)
            yaml_node = OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(node)))
            assert dataclasses.asdict(exporter_config(self.exporter_cls, yaml_node, "exporter")) == dataclasses.asdict(config)

    def test_rejects_a_bad_weight_format(self):
        import pytest

        with pytest.raises(ConfigError) as err:
            self.exporter_cls.Config(weights=self.bad_weights)
        assert self.bad_weights in str(err.value)

    def test_export_reopens_with_logits_within_tolerance(self, tmp_path):
        cls = self.exporter_cls
        state = self._state()
        artifact_dir = tmp_path / "artifact"
        save_artifact(state, artifact_dir, overwrite=False, records=[], model_info={"name": "tiny"})
        probe = state.data.eval[:2, :32]
        reference = model_logits(state.model, probe)
        for i, values in enumerate(self.configs):
            exporter = cls(cls.Config(**values))
            exporter.check_model(state.model.config, None)
            out_dir = tmp_path / f"export-{i}"
            out_dir.mkdir()
            facts = exporter.export(artifact_dir, state.model, state.tokenizer, out_dir)
            assert {"format", "requantized", "notes"} <= set(facts), f"{values}: export() must report these facts"
            assert any(out_dir.iterdir()), f"{values}: the export wrote nothing"
            session = cls.open(out_dir, threads=1)
            assert isinstance(session.runtime_version, str) and session.runtime_version
            logits = session.logits(probe)
            assert logits.shape == reference.shape and logits.dtype == torch.float32
            weights = dataclasses.asdict(exporter.config).get("weights", "auto")
            tolerance = self.tolerances[weights]
            diff = (logits - reference).abs().max().item()
            assert diff <= tolerance, f"{values}: logits differ from PyTorch by {diff} (tolerance {tolerance})"
            tokens = session.generate(probe[:1, :16], 5)
            assert len(tokens) == 5 and all(0 <= t < state.model.config.vocab_size for t in tokens)
            first = int(session.logits(probe[:1, :16])[0, -1].argmax())
            assert tokens[0] == first, f"{values}: greedy generation disagrees with the session's own logits"
