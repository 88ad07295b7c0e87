"""Third-party slimkit plugins, as small as a plugin can be, written from the README alone.

    slimkit pruner=random pruner.sparsity=0.1                # zero a random fraction of the selected weights
    slimkit quantizer=rtn quantizer.bits=4                   # round weights to a symmetric per-row int grid

Both inherit their kind's shared knobs (``sparsity`` / ``bits``, ``include``, ``exclude``, ``overrides``)
from slimkit's base configs and declare nothing of them.
"""

from __future__ import annotations

import dataclasses

import torch

from slimkit import Kind, PrunerConfig, QuantizerConfig, Stage
from slimkit.toolkit.modules import select_modules


@dataclasses.dataclass
class RandomConfig(PrunerConfig):
    """Random pruning: nothing beyond the shared pruner knobs."""


class RandomPruner(Stage):
    """Zero a seeded random ``sparsity`` fraction of every selected Linear weight."""

    kind = Kind.PRUNER
    name = "random"
    Config = RandomConfig
    zeroes_weights = True

    def apply(self, state):
        cfg = self.config
        generator = torch.Generator().manual_seed(state.seed)
        layers = select_modules(state.model, cfg.include, cfg.exclude, prefix="pruner")
        with torch.no_grad():
            for module in layers.values():
                keep = torch.rand(module.weight.shape, generator=generator) >= cfg.sparsity
                module.weight.mul_(keep)
        state.zero_masks = True
        return {"pruned_layers": len(layers)}


@dataclasses.dataclass
class RoundConfig(QuantizerConfig):
    """Round-to-nearest weights: the shared quantizer knobs, bits 2-8."""

    ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8)


class RoundToNearest(Stage):
    """Round each selected Linear weight to a symmetric per-row grid of ``bits`` bits, kept in float
    (fake quantization: the artifact stays a plain float model that ``from_pretrained`` reloads exactly)."""

    kind = Kind.QUANTIZER
    name = "rtn"
    Config = RoundConfig

    def apply(self, state):
        cfg = self.config
        layers = select_modules(state.model, cfg.include, cfg.exclude, prefix="quantizer")
        levels = 2 ** (cfg.bits - 1) - 1
        with torch.no_grad():
            for module in layers.values():
                scale = module.weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels
                module.weight.copy_(torch.round(module.weight / scale) * scale)
        return {"quantized_layers": len(layers), "bits": cfg.bits}
