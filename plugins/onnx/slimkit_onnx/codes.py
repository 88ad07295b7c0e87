"""slimkit's int4 codes written into the builder's ``MatMulNBits`` weights as they are.

onnxruntime-genai's builder quantizes every MatMul it writes at ``-p int4`` (round-to-nearest) into an
initializer pair ``<prefix>.MatMul.weight_Q4`` (uint8 ``[N, K / block, block / 2]``: two 4-bit values per byte,
the even input index in the low nibble) and ``<prefix>.MatMul.weight_scales`` (float32 ``[N, K / block]``);
without a zero-point input, ``MatMulNBits`` and the shared embedding's ``GatherBlockQuantized`` compute
``w = (q - 8) * scale``. A module whose symmetric 4-bit codes use groups of a multiple of the block size is
therefore written exactly: ``q = code + 8``, each group's float16 scale repeated over its blocks. This module
replaces those two initializers after the builder ran; a fused projection (``qkv_proj`` = q, k and v stacked
row-wise) is carried when all of its parts are. Anything else keeps the builder's own quantization, and
:func:`carry_codes` says why.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

WEIGHT_SUFFIX = ".MatMul.weight_Q4"
SCALE_SUFFIX = ".MatMul.weight_scales"
#: the builder's fused projections -> the transformers modules stacked row-wise, in order
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def modules_of(prefix: str, tied: bool) -> list[str] | None:
    """The transformers module names one builder MatMul stands for (``model.layers.0.attn.qkv_proj`` ->
    its q/k/v projections), or None for a name this mapping does not know."""
    if prefix == "lm_head":
        return ["model.embed_tokens" if tied else "lm_head"]
    found = re.fullmatch(r"model\.layers\.(\d+)\.(attn|mlp)\.(\w+)", prefix)
    if not found:
        return None
    layer, block, name = found.groups()
    base = f"model.layers.{layer}.{'self_attn' if block == 'attn' else 'mlp'}"
    return [f"{base}.{part}" for part in FUSED.get(name, (name,))]


def why_not_held(spec: Any, block_size: int) -> str | None:
    """None when ``MatMulNBits`` (4 bits, symmetric, ``block_size``) holds ``spec``'s codes as they are."""
    if spec is None:
        return "float weights (no integer codes)"
    if spec.bits != 4:
        return f"{spec.bits}-bit codes (the int4 export holds 4-bit codes)"
    if not spec.symmetric or spec.zero_point is not None:
        return "asymmetric codes (the export stores no zero points)"
    if spec.group_size % block_size:
        return f"groups of {spec.group_size} (not whole blocks of {block_size})"
    return None


def pack(codes: torch.Tensor, scale: torch.Tensor, group_size: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 ``codes`` [N, K] and float16 ``scale`` [N, K / group_size] as MatMulNBits initializers:
    uint8 [N, K / block, block / 2] and float32 [N, K / block]."""
    n, k = codes.shape
    q = (codes.to(torch.int16) + 8).to(torch.uint8).numpy().reshape(n, k // block_size, block_size // 2, 2)
    packed = q[..., 0] | (q[..., 1] << np.uint8(4))
    scales = scale.to(torch.float32).repeat_interleave(group_size // block_size, dim=1).numpy()
    return np.ascontiguousarray(packed), np.ascontiguousarray(scales)


def carry_codes(folder: Path, model_file: str, codes: dict[str, Any], tied: bool, block_size: int
                ) -> tuple[list[str], dict[str, str]]:
    """Replace the builder's int4 weights in ``folder/model_file`` (+ its external data) by ``codes`` where they
    hold them. Returns (the builder MatMuls carried, {the others: why})."""
    import onnx
    from onnx import numpy_helper

    path = folder / model_file
    proto = onnx.load(str(path))  # with its external data, into memory
    initializers = {init.name: init for init in proto.graph.initializer}
    carried, kept = [], {}
    for name in sorted(initializers):
        if not name.endswith(WEIGHT_SUFFIX):
            continue
        prefix = name[: -len(WEIGHT_SUFFIX)]
        modules = modules_of(prefix, tied)
        if modules is None:
            kept[prefix] = "a builder node this exporter does not map to transformers modules"
            continue
        specs = [codes.get(m) for m in modules]
        reasons = {why_not_held(s, block_size) for s in specs} - {None}
        if not reasons and len({s.group_size for s in specs}) != 1:
            reasons = {"parts with different group sizes"}
        if reasons:
            kept[prefix] = "; ".join(sorted(reasons))
            continue
        packed, scales = pack(torch.cat([s.codes for s in specs]), torch.cat([s.scale for s in specs]),
                              specs[0].group_size, block_size)
        scale_name = prefix + SCALE_SUFFIX
        old_w, old_s = numpy_helper.to_array(initializers[name]), numpy_helper.to_array(initializers[scale_name])
        if old_w.shape != packed.shape or old_s.size != scales.size:
            kept[prefix] = f"shapes differ from the builder's ({old_w.shape} vs {packed.shape})"
            continue
        initializers[name].CopyFrom(numpy_helper.from_array(packed, name))
        initializers[scale_name].CopyFrom(numpy_helper.from_array(scales.reshape(old_s.shape), scale_name))
        carried.append(prefix)
    if carried:
        data = folder / f"{model_file}.data"
        if data.exists():
            data.unlink()  # onnx appends to an existing data file
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    return carried, kept
