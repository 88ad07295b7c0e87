"""Unstructured magnitude pruning: zero the smallest-|w| weights of the selected Linear layers.

Sample config (``conf`` group ``pruner``)::

    pruner: magnitude
    pruner.sparsity: 0.5          # fraction of weights zeroed, 0 <= s < 1
    pruner.scope: layer           # layer | row | global (one |w| threshold across layers)
    pruner.pattern: null          # or "2:4" (then sparsity must be 0.5)
    pruner.exclude: [lm_head]     # glob patterns on module names
    pruner.overrides: {"model.layers.0.*": 0.3}
    pruner.schedule: {steps: 4, ramp: cubic, recovery_steps: 20, max_perplexity_ratio: 1.5}
    pruner.sensitivity: {scan: true, sparsities: [0.3, 0.5, 0.7]}

CLI: ``slimkit pruner=magnitude pruner.sparsity=0.7 pruner.schedule.steps=3``.

The zeros make the artifact smaller (sparse storage, :mod:`slimkit.toolkit.storage`), not faster on CPU;
``2:4`` masks only help with CUDA semi-structured kernels.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from slimkit.toolkit.modules import weight_matrix
from slimkit.toolkit.pruning import PruningConfig, UnstructuredPruner, apply_masks, compute_masks, sparsity_report


@dataclasses.dataclass
class MagnitudeConfig(PruningConfig):
    """Magnitude pruning settings (shared field names: see :class:`slimkit.toolkit.pruning.PruningConfig`)."""

    scopes = ("layer", "row", "global")


def prune_by_magnitude(layers: dict[str, torch.nn.Module], sparsity: float, scope: str) -> dict[str, float]:
    """One-shot: zero the ``sparsity`` fraction of smallest-|w| weights in place; return per-layer sparsity."""
    masks = compute_masks({n: weight_matrix(m).detach().abs() for n, m in layers.items()},
                          {n: sparsity for n in layers}, scope)
    apply_masks(layers, masks)
    return sparsity_report(layers)["per_layer_sparsity"]


class MagnitudePruner(UnstructuredPruner):
    """Unstructured magnitude pruning (score |w|); the zeros are written into the weights (permanent)."""

    name = "magnitude"
    Config = MagnitudeConfig
    layerwise_scores = True

    def scores(self, state, layers: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        return {n: weight_matrix(m).detach().abs().float() for n, m in layers.items()}
