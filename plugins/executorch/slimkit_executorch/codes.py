"""slimkit's integer codes handed to torchao as they are, so the ``.pte`` holds them (not re-quantized).

ExecuTorch's XNNPACK path reads its quantized weights from torchao's ``IntxUnpackedToInt8Tensor`` (codes as int8,
one scale per block of ``(1, group)``, a zero point per block): ``Int8DynamicActivationIntxWeightConfig``
makes one for each linear layer (int8 dynamic per-token activations, symmetric int4 in groups or int8 per output
channel), ``IntxWeightOnlyConfig`` for the embedding (the quantized embedding kernels, per row or in groups).
A module that carries slimkit codes (``weight = codes * scale`` per group, :class:`slimkit.deploy.holdings.IntCodes`)
gets that tensor built from its own codes and float16 scales (widened to float32, exact) instead of torchao's
rounding of the float weight; the lowering is the same as for torchao's own.

Held as they are: symmetric codes with positive scales — of at most 4 bits in any group that tiles the layer
(XNNPACK's blockwise int4 linear; int2/int3 codes fit the int4 range), of 5–8 bits with one scale per row in a
linear layer (XNNPACK's per-channel int8) and in any group in the embedding. Not held: asymmetric codes (XNNPACK's
int4/int8 weights have no zero point) and negative scales — AutoRound's full-range symmetric int4 (llama.cpp
``Q4_0``'s convention) maps each group's largest weight to -8 with a negative scale where that weight is positive,
and XNNPACK refuses the program at load time ("Failed to define tensor"); flipping the sign would need code +8.
The autoround quantizer's ``sym_grid=gptq`` (``scale = 2 * absmax / 15 > 0``) and the tied table
(``scale = absmax / 7``) are held. :func:`carry_codes` says why for each module it leaves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["carry_codes", "held_as", "quantized_weight", "why_not_held"]


def why_not_held(spec: Any, module: torch.nn.Module) -> str | None:
    """None when ExecuTorch's XNNPACK path holds ``spec``'s codes for ``module`` as they are, else why not."""
    if spec.zero_point is not None:
        return "asymmetric codes (XNNPACK's int4 and int8 weights are symmetric)"
    if spec.bits > 8:
        return f"{spec.bits}-bit codes (at most 8)"
    columns = spec.codes.shape[1]
    if columns % spec.group_size:
        return f"groups of {spec.group_size} do not tile {columns} input features"
    if isinstance(module, torch.nn.Linear) and spec.bits > 4 and spec.group_size != columns:
        return f"int{spec.bits} codes in groups of {spec.group_size} (XNNPACK's int8 linear weights have one scale " \
               "per output channel)"
    if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
        return f"a {type(module).__name__} (only linear layers and the embedding are quantized for XNNPACK)"
    if bool((spec.scale < 0).any()):
        return "negative scales (AutoRound's full-range symmetric int4, llama.cpp Q4_0's convention: a group's " \
               "largest weight at code -8); XNNPACK takes positive scales only: quantize with quantizer.sym_grid=gptq"
    return None


def quantized_weight(spec: Any, linear: bool):
    """torchao's tensor for ``spec``'s codes: int8 dynamic activations for a linear layer, weight-only for the
    embedding."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    out, columns = spec.codes.shape
    blocks = (out, columns // spec.group_size)
    return IntxUnpackedToInt8Tensor(
        qdata=spec.codes.to(torch.int8).contiguous(),
        scale=spec.scale.to(torch.float32).reshape(blocks).contiguous(),
        zero_point=torch.zeros(blocks, dtype=torch.int8),
        target_dtype=torch.int4 if spec.bits <= 4 else torch.int8,
        block_size=(1, spec.group_size),
        dtype=torch.float32,
        activation_quantization="int8_asym_per_token" if linear else None)


def held_as(spec: Any, module: torch.nn.Module) -> tuple[str, str]:
    """(short name, description) of the format ``spec``'s codes take in ``module``: ``8da4w``/``8da8w`` for a linear
    layer, ``int4``/``int8`` for the embedding."""
    width = 4 if spec.bits <= 4 else 8
    scales = "one scale per row" if spec.group_size == spec.codes.shape[1] else f"groups of {spec.group_size}"
    if isinstance(module, torch.nn.Linear):
        return f"8da{width}w", f"int{width} symmetric linear weights, {scales} (8da{width}w: int8 dynamic activations)"
    return f"int{width}", f"int{width} embedding, {scales}"


def carry_codes(model: torch.nn.Module, codes: Mapping[str, Any]) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Give every module of ``model`` named in ``codes`` torchao's tensor of its own codes (in place).

    A tied output layer whose weight is the embedding's gets the embedding's codes as a linear layer (the program
    stores the two separately). Returns ({module carried: :func:`held_as`}, {module not carried: why})."""
    modules = dict(model.named_modules())
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    plan = {name: (modules[name], spec) for name, spec in codes.items()}
    table = next((name for name, (module, _) in plan.items() if module is embedding), None)
    if table is not None and head is not None and head.weight is embedding.weight:
        plan[next(name for name, module in modules.items() if module is head)] = (head, codes[table])
    carried, kept = {}, {}
    for name in sorted(plan):
        module, spec = plan[name]
        why = why_not_held(spec, module)
        if why:
            kept[name] = why
            continue
        weight = quantized_weight(spec, linear=isinstance(module, torch.nn.Linear))
        module.weight = torch.nn.Parameter(weight, requires_grad=False)  # unties a tied head: each has its own
        carried[name] = held_as(spec, module)
    return carried, kept
