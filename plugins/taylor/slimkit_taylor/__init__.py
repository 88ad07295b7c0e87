"""First-order Taylor pruning: score each weight by its saliency ``|W_ij * dL/dW_ij|``, the
first-order estimate of how much the next-token loss ``L`` changes when the weight is set to zero
(LeCun et al. 1989; Molchanov et al. 2017/2019; LLM-Pruner's element-wise score, Ma et al. 2023).

The gradient comes from next-token loss on the calibration windows (``state.data.calibration``),
one window at a time (forward + backward, gradients only for the pruned layers' weights). Per-window
products are accumulated as ``sum (W*g)^2`` (``accumulate: squared``, the diagonal-Fisher form: a
weight that matters on some windows is not cancelled by others) or ``sum |W*g|`` (``absolute``).
Everything else (scopes, N:M, per-layer overrides, schedules with recovery, sensitivity scan,
exclusions, sparse storage) is the shared machinery of :mod:`slimkit.toolkit.pruning`.

Sample config (``conf`` group ``pruner``)::

    pruner: taylor
    pruner.sparsity: 0.5
    pruner.scope: row             # row | layer | global
    pruner.accumulate: squared    # squared | absolute
    pruner.windows: 0             # calibration windows used; 0 = all of data.calibration_samples
    pruner.pattern: null          # or "2:4" (sparsity must then be 0.5)
    pruner.exclude: [lm_head]
    pruner.schedule: {steps: 1, recovery_steps: 0}

CLI: ``slimkit pruner=taylor pruner.sparsity=0.5 pruner.scope=layer``.

Cost: one forward and one backward pass per calibration window (about 3x Wanda's forward-only
pass), recomputed at every schedule step. The zeros make the artifact smaller (sparse storage), not
faster on CPU; 2:4 masks only help with CUDA semi-structured kernels.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from tqdm.auto import tqdm

from slimkit.core.errors import DataError
from slimkit.core.plugin import check_choice, check_range
from slimkit.toolkit.modules import weight_matrix
from slimkit.toolkit.pruning import PruningConfig, UnstructuredPruner

ACCUMULATE = ("squared", "absolute")

__all__ = ["TaylorConfig", "TaylorPruner", "taylor_scores"]


@dataclasses.dataclass
class TaylorConfig(PruningConfig):
    """Taylor pruning settings (shared field names: see :class:`slimkit.toolkit.pruning.PruningConfig`)."""

    #: comparison group: 'row' (per output row), 'layer' or 'global'
    scope: str = "row"
    #: how per-window saliencies W*g add up: 'squared' (sum of squares) or 'absolute' (sum of |.|)
    accumulate: str = "squared"
    #: calibration windows to take gradients on (the first ones); 0 = all of state.data.calibration
    windows: int = 0

    scopes = ("row", "layer", "global")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("pruner.accumulate", self.accumulate, ACCUMULATE)
        check_range("pruner.windows", self.windows, 0)


def taylor_scores(model: torch.nn.Module, layers: Mapping[str, torch.nn.Module], windows: torch.Tensor,
                  accumulate: str = "squared", desc: str = "taylor gradients") -> dict[str, torch.Tensor]:
    """Accumulated ``|W * dL/dW|`` per weight of each layer (as ``[out, in]``) over ``windows`` ([n, seq_len] token ids),
    one window per forward/backward pass. Only the layers' weights get gradients; the model's
    ``requires_grad`` flags, gradients and train/eval mode are restored afterwards."""
    from slimkit.toolkit.training import next_token_loss

    check_choice("pruner.accumulate", accumulate, ACCUMULATE)
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise DataError(f"taylor pruning needs calibration windows of at least 2 tokens (data.calibration_samples "
                        f">= 1); got a tensor of shape {tuple(windows.shape)}")
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    weights = {n: m.weight for n, m in layers.items()}
    sums = {n: torch.zeros(w.shape, dtype=torch.float32) for n, w in weights.items()}
    was_training = model.training
    try:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        for w in weights.values():
            w.requires_grad_(True)
        model.eval()
        for i in tqdm(range(windows.shape[0]), desc=desc, leave=False, unit="window"):
            loss = next_token_loss(model, windows[i:i + 1])
            if not torch.isfinite(loss):
                raise DataError(f"taylor pruning: next-token loss on calibration window {i} is {loss.item()}; "
                                "the model or the data is broken")
            loss.backward()
            with torch.no_grad():
                for n, w in weights.items():
                    if w.grad is None:  # layer not on the loss path
                        continue
                    saliency = (w.detach().float() * w.grad.float())
                    sums[n] += saliency.square() if accumulate == "squared" else saliency.abs()
                    w.grad = None
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)
    return {n: weight_matrix(layers[n], s) for n, s in sums.items()}  # [out, in], Conv1D transposed


class TaylorPruner(UnstructuredPruner):
    """First-order Taylor pruning: |weight × gradient of the calibration loss|, accumulated over windows."""

    name = "taylor"
    Config = TaylorConfig

    def scores(self, state, layers: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        cfg = self.config
        calibration = state.data.calibration
        if calibration.shape[0] == 0:
            raise DataError("pruner=taylor needs calibration windows, but data.calibration_samples="
                            f"{state.data.calibration_samples} gives none; set data.calibration_samples >= 1")
        if cfg.windows > calibration.shape[0]:
            raise DataError(f"pruner.windows={cfg.windows} is more than the {calibration.shape[0]} calibration windows "
                            "(data.calibration_samples); lower pruner.windows or raise data.calibration_samples")
        windows = calibration[: cfg.windows] if cfg.windows else calibration
        return taylor_scores(state.model, layers, windows, cfg.accumulate, desc="taylor gradients")
