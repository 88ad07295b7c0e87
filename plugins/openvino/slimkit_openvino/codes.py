"""slimkit's integer codes written into the OpenVINO IR as they are (compressed weights, not re-quantized).

OpenVINO runs a weight-compressed LLM from a decompression subgraph in front of each weight — the layout
``nncf.compress_weights`` writes and the CPU plugin fuses into its compressed-weight MatMul and Gather kernels::

    Constant(i4 | u4 | i8 | u8, [out, in / g, g]) -> Convert(f16) [-> Subtract(zero point)]
        -> Multiply(f16 scale [out, in / g, 1]) -> Reshape([out, in]) -> Convert(f32) -> MatMul / Gather

(one scale per row — ``g`` = ``in`` — is NNCF's per-channel layout: codes ``[out, in]``, scales ``[out, 1]``, no
Reshape).

A module that carries slimkit codes (``weight = (codes - zero_point) * scale`` per group of ``g`` input
features, :class:`slimkit.deploy.holdings.IntCodes`) is written in exactly that layout from its own codes
and float16 scales: symmetric codes as signed constants (as NNCF writes its ``INT4_SYM``/``INT8_SYM``),
asymmetric ones as unsigned codes with unsigned zero points (``INT4_ASYM``), 4-bit containers for codes of at
most 4 bits, 8-bit ones up to 8. The float weight constants of the converted model are matched to the modules
by their values (the converter keeps no module names); a module whose weight is not found as one constant keeps
the exporter's other treatment, and :func:`carry_codes` says why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["carry_codes", "weight_constants", "why_not_held"]


def _digest(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array, dtype=np.float32).data, digest_size=16).hexdigest()


def weight_constants(ov_model, model: torch.nn.Module, names: set[str]) -> dict[str, Any]:
    """``{module name: the f32 Constant node holding its weight}`` for the modules ``names`` of ``model``, matched
    by value (shape [out, in] and every bit equal). A module missing from the result was not found as one constant."""
    wanted: dict[tuple, list[str]] = {}
    for name in names:
        weight = model.get_submodule(name).weight.detach()
        wanted.setdefault((tuple(weight.shape), _digest(weight.float().numpy())), []).append(name)
    shapes = {shape for shape, _ in wanted}
    found: dict[str, Any] = {}
    for op in ov_model.get_ops():
        if op.get_type_name() != "Constant" or op.get_element_type().get_type_name() != "f32":
            continue
        shape = tuple(op.get_output_shape(0))
        if shape not in shapes:  # hash only constants that could be one of the weights
            continue
        for name in wanted.get((shape, _digest(op.get_data())), ()):
            found.setdefault(name, op)
    return found


def why_not_held(spec: Any, shape: tuple[int, int]) -> str | None:
    """None when the compressed-weight layout holds ``spec``'s codes for a weight of ``shape`` as they are."""
    if spec.bits > 8:
        return f"{spec.bits}-bit codes (OpenVINO's compressed weights hold at most 8 bits)"
    if shape[1] % spec.group_size:
        return f"groups of {spec.group_size} do not tile {shape[1]} input features"
    return None


def _element_type(bits: int, signed: bool):
    from openvino import Type

    if bits <= 4:
        return Type.i4 if signed else Type.u4
    return Type.i8 if signed else Type.u8


def decompressed(spec: Any, shape: tuple[int, int], name: str):
    """The decompression subgraph of one module's codes (module docstring); its output is an f32 [out, in] weight."""
    from openvino import Type, opset13

    out, columns = shape
    groups = columns // spec.group_size
    # one scale per row: NNCF's per-channel layout ([out, in] codes, [out, 1] scales, no reshape)
    stored_shape, scale_shape = ((out, columns), (out, 1)) if groups == 1 else \
        ((out, groups, spec.group_size), (out, groups, 1))
    codes = spec.codes.to(torch.int16)
    symmetric = spec.zero_point is None
    offset = 0 if symmetric else 1 << (spec.bits - 1)  # asymmetric: unsigned codes and zero points, as NNCF writes
    stored = (codes + offset).reshape(stored_shape).numpy().astype(np.int8 if symmetric else np.uint8)
    weight = opset13.convert(opset13.constant(stored, dtype=_element_type(spec.bits, symmetric), name=name), Type.f16)
    if not symmetric:
        zero = (spec.zero_point.to(torch.int16) + offset).reshape(scale_shape).numpy().astype(np.uint8)
        zero_node = opset13.constant(zero, dtype=_element_type(spec.bits, False), name=f"{name}/zero_point")
        weight = opset13.subtract(weight, opset13.convert(zero_node, Type.f16), name=f"{name}/zero_point/subtract")
    scale = spec.scale.to(torch.float16).reshape(scale_shape).numpy()
    weight = opset13.multiply(weight, opset13.constant(scale, dtype=Type.f16, name=f"{name}/scale"),
                              name=f"{name}/fq_weights")
    if groups > 1:
        weight = opset13.reshape(weight, opset13.constant(np.array(shape, np.int64)), special_zero=False)
    return opset13.convert(weight, Type.f32, name=f"{name}/fq_weights/convert")


def carry_codes(ov_model, model: torch.nn.Module, codes: Mapping[str, Any]) -> tuple[list[str], dict[str, str], list]:
    """Replace the float weight constant of every module in ``codes`` by its codes' decompression subgraph.

    Returns (the modules carried, {the others: why}, the consumer ops of the carried weights — for NNCF's
    ignored scope when it compresses the rest). ``ov_model`` is changed in place."""
    constants = weight_constants(ov_model, model, set(codes))
    carried, kept, consumers = [], {}, []
    for name in sorted(codes):
        const = constants.get(name)
        if const is None:
            kept[name] = "its weight is not one constant of the converted model"
            continue
        shape = tuple(const.get_output_shape(0))
        why = why_not_held(codes[name], shape)
        if why:
            kept[name] = why
            continue
        targets = list(const.output(0).get_target_inputs())
        consumers += [target.get_node() for target in targets]
        const.output(0).replace(decompressed(codes[name], shape, f"{name}.weight").output(0))
        carried.append(name)
    ov_model.validate_nodes_and_infer_types()
    return carried, kept, consumers
