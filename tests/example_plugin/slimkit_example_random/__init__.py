"""A third-party slimkit pruner, as small as a plugin can be: zero a random fraction of weights.

    slimkit pruner=random pruner.sparsity=0.1
"""

from __future__ import annotations

import dataclasses

import torch

from slimkit import Kind, Stage, StageConfig, check_range
from slimkit.toolkit.modules import select_modules


@dataclasses.dataclass
class RandomConfig(StageConfig):
    """Random pruning settings."""

    #: fraction of each Linear weight to zero
    sparsity: float = 0.1

    def __post_init__(self) -> None:
        check_range("pruner.sparsity", self.sparsity, 0.0, 1.0, high_open=True)


class RandomPruner(Stage):
    """Zero a seeded random ``sparsity`` fraction of every Linear weight except lm_head."""

    kind = Kind.PRUNER
    name = "random"
    Config = RandomConfig

    def apply(self, state):
        generator = torch.Generator().manual_seed(state.seed)
        layers = select_modules(state.model, ["*"], ["lm_head"], prefix="pruner")
        with torch.no_grad():
            for module in layers.values():
                keep = torch.rand(module.weight.shape, generator=generator) >= self.config.sparsity
                module.weight.mul_(keep)
        return {"pruned_layers": len(layers)}
