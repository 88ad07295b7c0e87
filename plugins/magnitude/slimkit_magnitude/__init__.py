"""Unstructured magnitude pruning: zero the smallest-|w| weights of the selected Linear layers.

Sample config (``conf`` group ``pruner``)::

    pruner: magnitude
    pruner.sparsity: 0.5          # fraction of weights zeroed, 0 <= s < 1
    pruner.scope: layer           # layer: each layer to the same sparsity; global: one threshold
    pruner.exclude: [lm_head]     # glob patterns on module names
"""

from __future__ import annotations

import dataclasses
from typing import Any, List

import torch

from slimkit import Kind, Stage, StageConfig, check_choice, check_range
from slimkit.modules import select_modules

SCOPES = ("layer", "global")


@dataclasses.dataclass
class MagnitudeConfig(StageConfig):
    """Magnitude pruning settings."""

    #: fraction of the selected weights to zero, 0 <= sparsity < 1
    sparsity: float = 0.5
    #: 'layer' (every layer to ``sparsity``) or 'global' (one |w| threshold across layers)
    scope: str = "layer"
    #: glob patterns of module names to prune
    include: List[str] = dataclasses.field(default_factory=lambda: ["*"])
    #: glob patterns of module names to keep dense
    exclude: List[str] = dataclasses.field(default_factory=lambda: ["lm_head"])

    def __post_init__(self) -> None:
        check_range("pruner.sparsity", self.sparsity, 0.0, 1.0, high_open=True)
        check_choice("pruner.scope", self.scope, SCOPES)


def _kth_smallest_abs(weights: list[torch.Tensor], k: int) -> float:
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    return flat.kthvalue(k).values.item()


def prune_by_magnitude(layers: dict[str, torch.nn.Module], sparsity: float, scope: str) -> dict[str, float]:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights in place; return actual per-layer sparsity."""
    if sparsity == 0:
        return {name: _sparsity(m.weight) for name, m in layers.items()}
    with torch.no_grad():
        if scope == "global":
            weights = [m.weight for m in layers.values()]
            k = int(sparsity * sum(w.numel() for w in weights))
            threshold = _kth_smallest_abs(weights, k) if k else -1.0
            for w in weights:
                w.masked_fill_(w.abs() <= threshold, 0.0)
        else:
            for m in layers.values():
                w = m.weight
                k = int(sparsity * w.numel())
                if k:
                    idx = w.abs().flatten().topk(k, largest=False).indices  # exactly k, ties broken by index
                    w.view(-1)[idx] = 0.0
    return {name: _sparsity(m.weight) for name, m in layers.items()}


def _sparsity(w: torch.Tensor) -> float:
    return 1.0 - torch.count_nonzero(w).item() / w.numel()


class MagnitudePruner(Stage):
    """Unstructured magnitude pruning; the zeros are written into the weights (permanent)."""

    kind = Kind.PRUNER
    name = "magnitude"
    Config = MagnitudeConfig

    def apply(self, state) -> dict[str, Any]:
        cfg = self.config
        layers = select_modules(state.model, cfg.include, cfg.exclude, prefix="pruner")
        per_layer = prune_by_magnitude(layers, cfg.sparsity, cfg.scope)
        total = sum(m.weight.numel() for m in layers.values())
        zeros = sum(per_layer[n] * m.weight.numel() for n, m in layers.items())
        return {"sparsity": zeros / total, "pruned_layers": len(layers),
                "per_layer_sparsity": {n: round(s, 4) for n, s in per_layer.items()}}
