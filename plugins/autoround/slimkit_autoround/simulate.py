"""Quantization-aware training on the exact grid :class:`~slimkit_autoround.AutoRoundQuantizer` writes.

While a distiller trains, every weight the quantizer stage will quantize is replaced in the forward pass by
its quantize-dequantize image (a ``torch.nn.utils.parametrize`` parametrization whose backward is the identity:
the straight-through estimator, with no gradient to the scales), so the student learns to survive the rounding it will actually get:

- Linear layers in the plan: AutoRound's own quantize-dequantize function for the stage's data type
  (``int_sym``, ``int_sym_gptq`` or ``int_asym``) with this config's bits, group size and float16 scales — the functions ``method=rtn`` applies (SignRound and AWQ then
  move codes within that grid);
- the input embedding table (and a tied ``lm_head``, which is the same tensor) with ``quantizer.embedding``
  int8/int4: the table's round-to-nearest grid (:func:`slimkit_autoround.layout.round_to_nearest`).

Removing the simulation leaves the trained float weights in place (ties kept).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.nn.utils import parametrize

from .layout import round_to_nearest


class _StraightThrough(torch.autograd.Function):
    """``grid(weight)`` forward, the identity backward: gradients reach the float weight as they would reach the
    quantized one, and nothing of the rounding is kept for the backward pass (a saved graph through every
    weight's scales and codes would cost several copies of the model during training)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, grid) -> torch.Tensor:  # type: ignore[override]
        with torch.no_grad():
            return grid(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


class TableGrid(torch.nn.Module):
    """Quantize-dequantize on the embedding table's grid: :func:`~slimkit_autoround.layout.round_to_nearest`, the
    function :meth:`AutoRoundQuantizer.apply` quantizes the table with."""

    def __init__(self, bits: int, group_size: int):
        super().__init__()
        self.bits, self.group_size = bits, group_size

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(weight, self._qdq)

    def _qdq(self, weight: torch.Tensor) -> torch.Tensor:
        return round_to_nearest(weight, self.bits, self.group_size).dequantize(weight.dtype)


class LinearGrid(torch.nn.Module):
    """Quantize-dequantize with AutoRound's own per-group integer functions (``v = 0``: round-to-nearest)."""

    def __init__(self, bits: int, group_size: int, data_type: str):
        super().__init__()
        from auto_round.data_type import QUANT_FUNC_WITH_DTYPE

        self.bits, self.group_size = bits, group_size
        self._quantize = QUANT_FUNC_WITH_DTYPE[data_type]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(weight, self._qdq)

    def _qdq(self, weight: torch.Tensor) -> torch.Tensor:
        qdq, _, _ = self._quantize(weight, bits=self.bits, group_size=self.group_size, scale_dtype=torch.float16)
        return qdq.to(weight.dtype)


def simulate_grid(model: torch.nn.Module, plan: dict[str, Optional[int]], group_size: int, data_type: str,
                  table: Optional[tuple[list[str], int, int]]) -> Callable[[], int]:
    """Parametrize the planned Linear weights (``{name: bits or None}``, on AutoRound's ``data_type`` grid:
    ``int_sym``, ``int_sym_gptq`` or ``int_asym``) and the embedding table's modules
    (``(names, bits, group size)``: the input embedding and a tied output projection) with their grids; returns
    the undo function, which returns how many modules it restored."""
    touched: list[torch.nn.Module] = []
    for name, bits in plan.items():
        if bits is None or bits >= 16:
            continue
        module = model.get_submodule(name)
        parametrize.register_parametrization(module, "weight", LinearGrid(bits, group_size, data_type), unsafe=True)
        touched.append(module)
    if table is not None:
        names, bits, table_group = table
        grid = TableGrid(bits, table_group)
        for name in dict.fromkeys(names):
            module = model.get_submodule(name)
            parametrize.register_parametrization(module, "weight", grid, unsafe=True)
            touched.append(module)

    def undo() -> int:
        for module in touched:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        return len(touched)

    return undo
