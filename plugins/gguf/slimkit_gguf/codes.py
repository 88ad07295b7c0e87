"""slimkit's integer weights written into GGUF block formats as they are, without re-quantization.

A module that carries integer codes (:data:`slimkit.deploy.holdings.INT_WEIGHTS`: ``weight = code * scale``
per group of input features, symmetric) lines up with llama.cpp's symmetric block formats, whose blocks
are 32 weights with one float16 ``d`` and ``weight = d * (q - offset)``:

=======  ==========================  ===========  =====================
type     codes it holds              q            block bytes
=======  ==========================  ===========  =====================
Q4_0     4-bit and fewer, [-8, 7]    code + 8     d, 16 bytes of nibbles
Q5_0     5-bit and fewer, [-16, 15]  code + 16    d, 4 bytes of 5th bits, 16 bytes of nibbles
Q8_0     8-bit and fewer, [-128,127] code         d, 32 signed bytes
=======  ==========================  ===========  =====================

A group of ``32·k`` weights is ``k`` blocks that share its scale (``d`` = the group's float16 scale, its
sign included: llama.cpp's own Q4_0 quantizer writes negative ``d`` too). The byte layouts are gguf-py's
(``gguf.quants``: low nibbles hold elements 0-15 of a block, high nibbles 16-31; Q5_0's fifth bits
little-endian in a uint32), and the tests check every packed tensor against gguf-py's ``dequantize``.
Asymmetric codes (a zero point per group), groups that are not multiples of 32 and codes wider than the
format are not held; :func:`why_not_held` says which.
"""

from __future__ import annotations

from typing import Any

import gguf
import numpy as np
import torch

Q = gguf.GGMLQuantizationType
BLOCK = 32
#: block type -> (the widest codes it holds, the offset added to a code to store it unsigned)
CODE_TYPES = {Q.Q4_0: (4, 8), Q.Q5_0: (5, 16), Q.Q8_0: (8, 0)}


def why_not_held(spec: Any, qtype: Any) -> str | None:
    """None when ``qtype`` holds ``spec``'s codes exactly; otherwise the reason, in words."""
    if qtype not in CODE_TYPES:
        return f"{qtype.name} is not a block format of integer codes"
    if not spec.symmetric or spec.zero_point is not None:
        return f"asymmetric {spec.bits}-bit codes (a zero point per group; {qtype.name} has none)"
    if spec.group_size % BLOCK:
        return f"groups of {spec.group_size} (GGUF blocks are {BLOCK} weights with one scale)"
    if spec.bits > CODE_TYPES[qtype][0]:
        return f"{spec.bits}-bit codes (wider than {qtype.name}'s {CODE_TYPES[qtype][0]} bits)"
    return None


def dequantized(spec: Any) -> torch.Tensor:
    """The float32 weight ``spec``'s codes stand for (``(codes - zero_point) * scale`` per group)."""
    codes = spec.codes.to(torch.float32)
    out, cols = codes.shape
    groups = codes.view(out, cols // spec.group_size, spec.group_size)
    if spec.zero_point is not None:
        groups = groups - spec.zero_point.to(torch.float32)[..., None]
    return (groups * spec.scale.to(torch.float32)[..., None]).view(out, cols)


def matches(weight: torch.Tensor, spec: Any) -> bool:
    """Whether ``weight`` is still exactly what ``spec``'s codes stand for (no later stage changed it)."""
    return tuple(weight.shape) == tuple(spec.codes.shape) and torch.equal(weight.detach().to(torch.float32),
                                                                           dequantized(spec))


def smallest_holder(spec: Any) -> Any | None:
    """The smallest block type that holds ``spec``'s codes as they are, or None."""
    return next((q for q in (Q.Q4_0, Q.Q5_0, Q.Q8_0) if why_not_held(spec, q) is None), None)


def pack(codes: torch.Tensor, scale: torch.Tensor, group_size: int, qtype: Any) -> np.ndarray:
    """Integer ``codes`` [out, in] and float16 ``scale`` [out, in / group_size] as ``qtype`` blocks: uint8
    [out, bytes per row], the shape ``gguf.quant_shape_to_byte_shape`` gives."""
    bits, offset = CODE_TYPES[qtype]
    out, cols = codes.shape
    blocks = cols // BLOCK
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    c = codes.to(torch.int16)
    if int(c.min()) < lo or int(c.max()) > hi:
        raise ValueError(f"codes in [{int(c.min())}, {int(c.max())}] do not fit {qtype.name} ([{lo}, {hi}])")
    d = scale.to(torch.float16).repeat_interleave(group_size // BLOCK, dim=1)  # [out, blocks]
    d = d.numpy().view(np.uint8).reshape(out, blocks, 2)
    if qtype is Q.Q8_0:
        q = c.to(torch.int8).numpy().view(np.uint8).reshape(out, blocks, BLOCK)
        return np.concatenate([d, q], axis=-1).reshape(out, -1)
    q = (c + offset).to(torch.uint8).numpy().reshape(out, blocks, 2, BLOCK // 2)
    nibbles = (q[..., 0, :] & np.uint8(0x0F)) | ((q[..., 1, :] & np.uint8(0x0F)) << np.uint8(4))
    if qtype is Q.Q4_0:
        return np.concatenate([d, nibbles], axis=-1).reshape(out, -1)
    fifth = np.packbits((q.reshape(out, blocks, BLOCK) >> np.uint8(4)) & np.uint8(1), axis=-1, bitorder="little")
    return np.concatenate([d, fifth, nibbles], axis=-1).reshape(out, -1)
