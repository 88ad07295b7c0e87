"""Wanda pruning (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"): score each
weight by ``|W_ij| * ||X_j||_2``, where ``||X_j||_2`` is the L2 norm of input feature ``j`` over all
calibration tokens (``state.data.calibration``), collected by forward hooks on the pruned layers.
As in the paper, weights are compared within each output row (``scope: row``); ``layer`` compares
within the whole matrix. No weight update, no gradients.

Sample config (``conf`` group ``pruner``)::

    pruner: wanda
    pruner.sparsity: 0.5
    pruner.scope: row             # row (paper) | layer
    pruner.pattern: null          # or "2:4" (sparsity must then be 0.5)
    pruner.exclude: [lm_head]
    pruner.schedule: {steps: 1, recovery_steps: 0}

CLI: ``slimkit pruner=wanda pruner.pattern=2:4``.

One deviation from the paper's code: activation norms come from one forward pass per schedule step
through the current model, not block by block with earlier blocks already pruned. The zeros make the
artifact smaller (sparse storage), not faster on CPU; 2:4 masks only help with CUDA kernels.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from tqdm.auto import tqdm

from slimkit.toolkit.modules import in_features, weight_matrix
from slimkit.toolkit.pruning import PruningConfig, UnstructuredPruner


@dataclasses.dataclass
class WandaConfig(PruningConfig):
    """Wanda settings (shared field names: see :class:`slimkit.toolkit.pruning.PruningConfig`)."""

    #: comparison group: 'row' (per output row, as in the paper) or 'layer'
    scope: str = "row"

    scopes = ("row", "layer")


def input_norms(model: torch.nn.Module, layers: Mapping[str, torch.nn.Module], windows: torch.Tensor,
                batch_size: int = 4) -> dict[str, torch.Tensor]:
    """``||X_j||_2`` over all tokens of ``windows`` for each input feature of each layer."""
    sums = {n: torch.zeros(in_features(m), dtype=torch.float64) for n, m in layers.items()}

    def hook(name):
        def record(module, args):
            x = args[0].detach().reshape(-1, in_features(module)).double()
            sums[name] += x.pow(2).sum(0)
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, windows.shape[0], batch_size), desc="wanda activation norms", leave=False):
                model(input_ids=windows[start:start + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {n: s.sqrt().float() for n, s in sums.items()}


class WandaPruner(UnstructuredPruner):
    """Wanda: |weight| × input-activation norm, compared per output row."""

    name = "wanda"
    Config = WandaConfig

    def scores(self, state, layers: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        norms = input_norms(state.model, layers, state.data.calibration)
        return {n: weight_matrix(m).detach().abs().float() * norms[n][None, :] for n, m in layers.items()}
