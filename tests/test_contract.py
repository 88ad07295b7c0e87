"""The shared contract catches the mistakes it exists for, and the example third-party plugins pass it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from slimkit import ArtifactError, Kind, PrunerConfig, Stage
from slimkit.testing import StageContract, random_token_state
from slimkit.testing.contract import outside_values
from slimkit_example_random import RandomPruner, RoundToNearest


class TestRandomPrunerContract(StageContract):
    stage_cls = RandomPruner
    configs = [{"sparsity": 0.3}, {"sparsity": 0.5, "exclude": ["lm_head", "*.mlp.*"]}]
    unchanged_configs = [{"sparsity": 0.0}]

    def _state(self):
        return random_token_state()


class TestRoundToNearestContract(StageContract):
    stage_cls = RoundToNearest
    configs = [{"bits": 4}, {"bits": 8, "include": ["*.mlp.*"]}]

    def _state(self):
        return random_token_state()


@dataclasses.dataclass
class _Config(PrunerConfig):
    pass


class DoesNothing(Stage):
    """A stage whose apply forgets to do its work."""

    kind, name, Config = Kind.PRUNER, "does_nothing", _Config

    def apply(self, state):
        return {}


class _HalvedLinear(torch.nn.Linear):
    def forward(self, x):
        return super().forward(x) * 0.5


class ForgetsItsWriter(Stage):
    """Changes the model in a way save_pretrained cannot write (a module class of its own) and does not set
    state.artifact_writer: the saved file holds plain Linear weights, so the reload is not the model."""

    kind, name, Config = Kind.PRUNER, "forgets_writer", _Config

    def apply(self, state):
        for layer in state.model.model.layers:
            layer.mlp.down_proj.__class__ = _HalvedLinear
        return {}


def _contract_for(stage_cls):
    class Probe(StageContract):
        pass

    Probe.stage_cls = stage_cls
    Probe._state = lambda self: random_token_state()
    return Probe()


def test_contract_fails_a_no_op_stage(tmp_path):
    with pytest.raises(AssertionError, match="left the model exactly as it was"):
        _contract_for(DoesNothing).test_changes_the_model_runs_and_reloads_with_same_logits({}, tmp_path)


def test_contract_fails_a_stage_that_forgets_its_writer_and_keeps_no_folder(tmp_path):
    with pytest.raises(ArtifactError, match="not a faithful save"):
        _contract_for(ForgetsItsWriter).test_changes_the_model_runs_and_reloads_with_same_logits({}, tmp_path)
    assert not (tmp_path / "artifact").exists()
    assert not any(p.name.startswith(".artifact") for p in tmp_path.iterdir())  # the partial folder is gone too


def test_contract_derives_out_of_range_values_from_the_base_configs():
    bad = dict(outside_values(RoundToNearest.Config))
    assert bad["bits"] == 9 and "activations" in bad
    assert ("sparsity", 1.0) in outside_values(RandomPruner.Config)
