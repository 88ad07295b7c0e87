"""The int8 Linear: int8 weights (one scale per output channel) times int8 activations quantized
dynamically, one scale per token, on torch's native CPU kernels.

Two kernels, chosen per call by the number of token rows:

* several rows (prefill, scoring): the activations are quantized per token in eager torch and
  multiplied by oneDNN's int8 linear (``torch.ops.onednn.qlinear_pointwise``, VNNI) on a prepacked copy
  of the weights, which applies the channel scales in its epilogue and writes fp32; the token scales
  follow in place. The codes are passed as uint8 with zero point 128 and activation scale 1, so the
  result is bit-identical to ``torch._int_mm`` + rescale, the fallback where oneDNN is unavailable
  (the epilogue saves a cast and a full pass over the output: ~8% of SmolLM2's int8 prefill);
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


def _has_vnni() -> bool:
    """AVX512-VNNI / AVX-VNNI present: fbgemm's u8*s8 products cannot saturate, no reduce_range needed."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


# fbgemm's u8*s8 products can saturate without VNNI; reduce_range avoids it (decided once per process)
_REDUCE_RANGE = not _has_vnni()


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: ``(int8 [out, in], float scales [out])``."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_tokens(x: torch.Tensor, unsigned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of a 2-D tensor: ``(int8 [m, k], float scales [m, 1])``; with ``unsigned``
    the same codes shifted by 128 into uint8 (zero point 128)."""
    # abs().amax() is ~6x faster than linalg.vector_norm(ord=inf) and ~20x faster than aminmax on CPU;
    # float->uint8 casts are ~7x slower than float->int8, so the uint8 codes are the int8 codes with the
    # sign bit flipped (c + 128 == c ^ 0x80 in two's complement) (measured, 128x576, 1 thread)
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min_(1e-12).div_(127.0)
    codes = torch.div(x, scale).round_().to(torch.int8)
    return (codes.view(torch.uint8).bitwise_xor_(128) if unsigned else codes), scale


def _frozen(codes: torch.Tensor) -> torch.nn.Parameter:
    """Integer codes as a Parameter that never takes a gradient (shares ``codes``' storage)."""
    return torch.nn.Parameter(codes, requires_grad=False)


def _fbgemm_pack(weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor]):
    """fbgemm's prepacked form of per-channel int8 weights (derived state, never saved)."""
    with warnings.catch_warnings():  # torch warns that quantized tensor constructors are deprecated
        warnings.simplefilter("ignore")
        qweight = torch._make_per_channel_quantized_tensor(
            weight_int8, weight_scale.double(), torch.zeros(weight_int8.shape[0], dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qweight, bias)


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    """oneDNN's int8 linear can run here (x86 CPU builds of torch)."""
    try:
        w = torch.ones(2, 4, dtype=torch.int8)
        packed = torch.ops.onednn.qlinear_prepack(w, None)
        x = torch.full((3, 4), 129, dtype=torch.uint8)
        y = torch.ops.onednn.qlinear_pointwise(x, 1.0, 128, packed, torch.ones(2), torch.zeros(2, dtype=torch.long),
                                               None, 1.0, 0, torch.float32, "none", [], "")
        return bool(torch.equal(y, torch.full((3, 2), 4.0)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class _KernelWeights:
    """Kernel-specific prepacked copies of one int8 weight, built on first use, never saved.

    Subclasses hold ``weight_int8`` [out, in], ``weight_scale`` [out], ``bias``, ``out_features`` and
    ``activations``.
    """

    _fbgemm: Optional[object] = None
    _onednn: Optional[tuple] = None
    #: True: several-row calls use oneDNN; False: torch._int_mm (tests compare the two)
    use_onednn: bool = True

    def _forget_packed(self) -> None:
        self._fbgemm = self._onednn = None

    def __getstate__(self):  # copies and pickles rebuild the packs (oneDNN's cannot be copied)
        state = self.__dict__.copy()
        state.pop("_fbgemm", None)
        state.pop("_onednn", None)
        return state

    def _fbgemm_weight(self):
        if self._fbgemm is None:
            self._fbgemm = _fbgemm_pack(self.weight_int8, self.weight_scale, self.bias)
        return self._fbgemm

    def _onednn_weight(self) -> tuple:
        if self._onednn is None:
            self._onednn = (torch.ops.onednn.qlinear_prepack(self.weight_int8.detach(), None),
                            torch.zeros(self.out_features, dtype=torch.long))
        return self._onednn

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T (+ bias)``: per-token int8 activations (several rows, see module docs) or
        fbgemm's fused dynamic kernel (one scale per call: one row, or ``activations='tensor'``)."""
        # the one-row branch runs once per Linear per decoded token: it touches only plain attributes
        # (buffers go through nn.Module.__getattr__) and makes no call it can skip
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype != torch.float32:
            x2 = x2.float()
        if x2.shape[0] == 1 or self.activations != "token":
            packed = self._fbgemm if self._fbgemm is not None else self._fbgemm_weight()
            y = torch.ops.quantized.linear_dynamic(x2.contiguous(), packed, _REDUCE_RANGE)
        else:
            y = self._per_token_matmul(x2)
        y = y.view(*shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _per_token_matmul(self, x2: torch.Tensor) -> torch.Tensor:
        if self.use_onednn and onednn_available():
            xq, xs = quantize_tokens(x2, unsigned=True)
            packed, zero_points = self._onednn_weight()
            y = torch.ops.onednn.qlinear_pointwise(xq, 1.0, 128, packed, self.weight_scale, zero_points, None,
                                                   1.0, 0, torch.float32, "none", [], "").mul_(xs)
        else:
            xq, xs = quantize_tokens(x2)
            y = torch._int_mm(xq, self.weight_int8.t()).mul(self.weight_scale).mul_(xs)
        return y if self.bias is None else y.add_(self.bias)


class Int8Linear(_KernelWeights, torch.nn.Module):
    """A drop-in for ``torch.nn.Linear`` holding int8 weights and per-channel scales (see module docs).

    ``weight_int8`` [out, in] (a frozen int8 Parameter) and the buffers ``weight_scale`` [out] (plus ``bias``) are what the artifact
    stores; the kernels' prepacked copies are rebuilt lazily and never saved.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activations: str = "token"):
        super().__init__()
        if activations not in ACTIVATION_MODES:
            raise ValueError(f"activations must be one of {ACTIVATION_MODES}, got {activations!r}")
        self.in_features, self.out_features, self.activations = in_features, out_features, activations
        # a frozen Parameter (not a buffer) so parameter counts see the weights; never trained
        self.weight_int8 = _frozen(torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features))
        else:
            self.bias = None
        self._group: Optional[FusedGroup] = None  # set by fuse_groups

    @classmethod
    def from_float(cls, linear: torch.nn.Linear, activations: str = "token") -> "Int8Linear":
        """Quantize a float Linear's (or GPT-2 ``Conv1D``'s) weight (the layer is left untouched)."""
        from slimkit.toolkit.modules import in_features, out_features, weight_matrix

        module = cls(in_features(linear), out_features(linear), linear.bias is not None, activations)
        q, s = quantize_weight(weight_matrix(linear).contiguous())
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
        self._forget_packed()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._forget_packed()
        return super()._apply(fn, *args, **kwargs)

    def _forget_packed(self) -> None:
        super()._forget_packed()
        if self._group is not None:
            self._group._forget_packed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._group is not None:
            y = self._group.output_for(self, x)
            if y is not None:
                return y
        return self.matmul(x)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weights=int8 per channel, activations=int8 per {self.activations}")


class FusedGroup(_KernelWeights):
    """Int8Linears that read the same input tensor (q/k/v, gate/up), run as one int8 GEMM.

    The members' buffers become row slices of one concatenated weight (so the state dict, the
    artifact and in-place loads are unchanged). The first member called with an input computes
    every member's output; the others take theirs if they are called with that same tensor object,
    and otherwise compute alone, so a wrong grouping can cost time but never change a result.
    """

    def __init__(self, members: list[Int8Linear]):
        if len(members) < 2 or len({m.in_features for m in members}) != 1 or len({m.activations for m in members}) != 1:
            raise ValueError("a fused group needs >= 2 Int8Linears with the same in_features and activation mode")
        self.members = list(members)
        self.splits = [m.out_features for m in members]
        self.out_features = sum(self.splits)
        self.activations = members[0].activations
        self.weight_int8 = torch.cat([m.weight_int8 for m in members])
        self.weight_scale = torch.cat([m.weight_scale for m in members])
        has_bias = any(m.bias is not None for m in members)
        self.bias = torch.cat([m.bias if m.bias is not None else torch.zeros(m.out_features) for m in members]) \
            if has_bias else None
        for m, w, s, b in zip(members, self.weight_int8.split(self.splits), self.weight_scale.split(self.splits),
                              self.bias.split(self.splits) if has_bias else [None] * len(members)):
            m.weight_int8, m.weight_scale = _frozen(w), s  # re-pointed at views of the fused tensors
            if m.bias is not None:
                m.bias = b
            m._fbgemm = m._onednn = None
            m._group = self
        self._input: Optional[torch.Tensor] = None
        self._pending: dict[Int8Linear, torch.Tensor] = {}

    def output_for(self, member: Int8Linear, x: torch.Tensor) -> Optional[torch.Tensor]:
        """``member``'s output for ``x`` from the fused GEMM, or None (the member then runs alone)."""
        if x is self._input:
            y = self._pending.pop(member, None)
            if y is not None:
                if not self._pending:
                    self._input = None
                return y
        if member is not self.members[0]:
            return None
        outputs = self.matmul(x).split(self.splits, dim=-1)
        self._input = x
        self._pending = dict(zip(self.members[1:], outputs[1:]))
        return outputs[0]


def set_prefill_kernel(model: torch.nn.Module, kernel: str) -> str:
    """Choose the several-row kernel of every Int8Linear and fused group ('auto', 'onednn' or 'int_mm');
    returns the kernel in use."""
    use = kernel != "int_mm" and onednn_available()
    for module in model.modules():
        if isinstance(module, Int8Linear):
            if not use:
                module._forget_packed()  # a oneDNN copy built earlier (e.g. by the fusion probe) is not kept
            module.use_onednn = use
            if module._group is not None:
                module._group.use_onednn = use
    return "onednn" if use else "int_mm"


def find_shared_inputs(model: torch.nn.Module, input_ids: torch.Tensor) -> list[list[str]]:
    """Names of the Int8Linears that one forward pass calls on the same input tensor, grouped in call order."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, Int8Linear)}
    calls: list[tuple[str, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append((names[mod], args[0]))) for m in names]
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    groups: list[list[str]] = []
    previous = None
    for name, tensor in calls:
        if previous is not None and tensor is previous:
            groups[-1].append(name)
        else:
            groups.append([name])
        previous = tensor
    seen: set[str] = set()
    fused = []
    for group in groups:  # one forward per layer: a module called twice is not fused again
        if len(group) > 1 and not seen.intersection(group):
            fused.append(group)
        seen.update(group)
    return fused


def fuse_groups(model: torch.nn.Module, groups: list[list[str]]) -> int:
    """Fuse each named group of Int8Linears (see FusedGroup); returns how many Linears were fused."""
    count = 0
    for group in groups:
        members = [model.get_submodule(n) for n in group]
        if all(isinstance(m, Int8Linear) for m in members) and len({m.in_features for m in members}) == 1 \
                and len({m.activations for m in members}) == 1:
            FusedGroup(members)
            count += len(members)
    return count


class Int8Embedding(torch.nn.Module):
    """An embedding table stored as int8 rows with one float scale per row (per-row symmetric).

    Tied to an int8 ``lm_head``, it *shares* that module's buffers: the output projection's per-channel
    int8 weight is the per-row int8 embedding table, so the artifact stores the table once.
    ``embed_scale`` carries scaled embeddings (Gemma multiplies the looked-up rows by sqrt(hidden)).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, embed_scale: float = 1.0):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.embed_scale = num_embeddings, embedding_dim, float(embed_scale)
        self.weight_int8 = _frozen(torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))

    @classmethod
    def from_float(cls, embedding: torch.nn.Embedding) -> "Int8Embedding":
        scale = getattr(embedding, "embed_scale", 1.0)
        module = cls(embedding.num_embeddings, embedding.embedding_dim, float(scale))
        q, s = quantize_weight(embedding.weight)
        module.weight_int8.copy_(q)
        module.weight_scale.copy_(s)
        return module

    def tie_to(self, linear: Int8Linear) -> None:
        """Share ``linear``'s int8 weight and scales (a tied lm_head)."""
        if (linear.out_features, linear.in_features) != (self.num_embeddings, self.embedding_dim):
            raise ValueError("the tied Linear's shape does not match the embedding table")
        self.weight_int8, self.weight_scale = linear.weight_int8, linear.weight_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = torch.nn.functional.embedding(input_ids, self.weight_int8).float()
        scale = self.weight_scale[input_ids].unsqueeze(-1)
        if self.embed_scale != 1.0:
            scale = scale * self.embed_scale
        return rows.mul_(scale)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per row, embed_scale={self.embed_scale:g}"


def simulated_int8(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Float simulation of int8 per-channel weights x int8 per-token activations (for error estimates)."""
    q, s = quantize_weight(weight)
    x2 = x.reshape(-1, x.shape[-1]).float()
    xq, xs = quantize_tokens(x2)
    return (xq.float() @ q.float().t()) * s * xs
