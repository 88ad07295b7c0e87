"""The int8 Linear: int8 weights (one scale per output channel) times int8 activations quantized
dynamically, one scale per token, on torch's native CPU kernels.

Two kernels, chosen per call by the number of token rows:

* several rows (prefill, scoring): the activations are quantized per token in eager torch and
  multiplied with ``torch._int_mm`` (int8 x int8 -> int32, oneDNN/VNNI), then rescaled by the token
  scales and the channel scales;
* one row (batch-1 decode): fbgemm's fused dynamic linear (``torch.ops.quantized.linear_dynamic``)
  on a prepacked copy of the same int8 weights. Its activation scale is per tensor, which for a
  single row *is* per token; it is about twice as fast as ``_int_mm`` at one row because the quantize
  step runs fused in C++ and the weights are prepacked.

``activations="tensor"`` uses the fbgemm kernel for every call (one scale per call: faster prefill,
but activation outliers then cost accuracy unless they were smoothed away first).
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch

ACTIVATION_MODES = ("token", "tensor")


@functools.lru_cache(maxsize=1)
def _has_vnni() -> bool:
    """AVX512-VNNI / AVX-VNNI present: fbgemm's u8*s8 products cannot saturate, no reduce_range needed."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: ``(int8 [out, in], float scales [out])``."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of a 2-D tensor: ``(int8 [m, k], float scales [m, 1])``."""
    # abs().amax() is ~6x faster than linalg.vector_norm(ord=inf) on CPU (measured, 128x576, 1 thread)
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min_(1e-12).div_(127.0)
    return torch.round(x / scale).to(torch.int8), scale


class Int8Linear(torch.nn.Module):
    """A drop-in for ``torch.nn.Linear`` holding int8 weights and per-channel scales (see module docs).

    Buffers ``weight_int8`` [out, in] and ``weight_scale`` [out] (plus ``bias``) are what the artifact
    stores; the fbgemm-packed copy is rebuilt lazily and never saved.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activations: str = "token"):
        super().__init__()
        if activations not in ACTIVATION_MODES:
            raise ValueError(f"activations must be one of {ACTIVATION_MODES}, got {activations!r}")
        self.in_features, self.out_features, self.activations = in_features, out_features, activations
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features))
        else:
            self.bias = None
        self._packed: Optional[object] = None

    @classmethod
    def from_float(cls, linear: torch.nn.Linear, activations: str = "token") -> "Int8Linear":
        """Quantize a float Linear's weight (the Linear is left untouched)."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, activations)
        q, s = quantize_weight(linear.weight)
        module.weight_int8.copy_(q)
        module.weight_scale.copy_(s)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach().float())
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the int8 codes stand for."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    # the packed weight is derived state: drop it on (de)serialisation and whenever buffers change
    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._packed = None
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def _fbgemm_weight(self):
        if self._packed is None:
            with warnings.catch_warnings():  # torch warns that quantized tensor constructors are deprecated
                warnings.simplefilter("ignore")
                qweight = torch._make_per_channel_quantized_tensor(
                    self.weight_int8, self.weight_scale.double(),
                    torch.zeros(self.out_features, dtype=torch.long), 0)
                self._packed = torch.ops.quantized.linear_prepack(qweight, self.bias)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype != torch.float32:
            x2 = x2.float()
        if x2.shape[0] == 1 or self.activations == "tensor":
            y = torch.ops.quantized.linear_dynamic(x2.contiguous(), self._fbgemm_weight(), not _has_vnni())
        else:
            xq, xs = quantize_tokens(x2)
            y = torch._int_mm(xq, self.weight_int8.t()).mul(self.weight_scale).mul_(xs)
            if self.bias is not None:
                y.add_(self.bias)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weights=int8 per channel, activations=int8 per {self.activations}")


def simulated_int8(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Float simulation of int8 per-channel weights x int8 per-token activations (for error estimates)."""
    q, s = quantize_weight(weight)
    x2 = x.reshape(-1, x.shape[-1]).float()
    xq, xs = quantize_tokens(x2)
    return (xq.float() @ q.float().t()) * s * xs
