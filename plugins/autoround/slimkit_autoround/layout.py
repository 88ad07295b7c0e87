"""The integer weights of an ``autoround`` artifact: how they sit in memory, how they are written and how an
exporter reads them back without re-quantizing.

In memory (after :meth:`AutoRoundQuantizer.apply`) the model is a plain float model whose quantized
weights are *fake-quantized*: ``weight == codes * scale`` exactly, in float32. Each quantized module
(``Linear``, and the input ``Embedding`` when ``quantizer.embedding`` is int8/int4) carries an
:class:`IntWeights` record in the attribute ``slimkit_int_weights``.

On disk the artifact is a Hugging Face folder in the **compressed-tensors "pack-quantized"** format, which
plain ``AutoModelForCausalLM.from_pretrained`` reads when the ``compressed-tensors`` package is installed
(it unpacks to a dense float model). Per quantized module ``<name>`` the safetensors file holds:

- ``<name>.weight_packed``: int32 ``[out, ceil(in * bits / 32)]``; the codes of one row, element ``i``
  at bit offset ``i * bits`` (little-endian), each stored as the unsigned value ``code + 2**(bits-1)``;
  for 4 bits that is 8 codes per int32, element ``i`` in nibble ``i % 8``.
- ``<name>.weight_scale``: float16 ``[out, in / group_size]``.
- ``<name>.weight_zero_point``: only for asymmetric schemes (signed convention, packed along dim 0).
- ``<name>.weight_shape``: int64 ``[2]`` = ``(out, in)``.

``config.json`` → ``quantization_config.config_groups[*]`` gives, per group, ``targets`` (the module names),
``weights.num_bits``, ``weights.group_size`` and ``weights.symmetric``; ``ignore`` lists Linear modules
kept in float. Dequantization: ``w[o, i] = (code[o, i] - zero[o, i // g]) * scale[o, i // g]``
(``zero = 0`` when symmetric). Symmetric 4-bit codes lie in ``[-8, 7]``: AutoRound maps each group's
largest-magnitude weight to -8 (``scale`` = that weight / -8, so scales can be negative, exactly llama.cpp
``Q4_0``'s convention); with ``quantizer.sym_grid=gptq`` it uses GPTQ's ``scale = 2 * absmax / 15 > 0``; the
embedding table and the budget scan use ``scale = absmax / 7`` (codes in ``[-7, 7]``). Either way a symmetric group of 32·k
maps onto k GGUF ``Q4_0`` blocks (fp16 ``d`` = the group's scale, ``q = code + 8``) and onto ONNX
``MatMulNBits`` (bits 4, block_size = group_size, default zero point 8) without re-quantization.

:func:`read_int_weights` returns these tensors unpacked, per module, from an artifact folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import torch

#: the attribute holding a module's :class:`IntWeights` in memory
ATTRIBUTE = "slimkit_int_weights"
#: the compressed-tensors format the artifact uses
FORMAT = "pack-quantized"


@dataclasses.dataclass
class IntWeights:
    """One module's integer weights: ``weight = (codes - zero_point) * scale`` per group of ``group_size``
    input features."""

    bits: int
    group_size: int
    symmetric: bool
    #: float16 [out, in / group_size]
    scale: torch.Tensor
    #: int8 [out, in], in [-2**(bits-1), 2**(bits-1) - 1]
    codes: Optional[torch.Tensor] = None
    #: asymmetric schemes only: [out, in / group_size] in the same signed convention as ``codes``
    zero_point: Optional[torch.Tensor] = None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight these codes stand for."""
        codes = self.codes.to(torch.float32)
        out, cols = codes.shape
        groups = codes.view(out, cols // self.group_size, self.group_size)
        if self.zero_point is not None:
            groups = groups - self.zero_point.to(torch.float32)[..., None]
        return (groups * self.scale.to(torch.float32)[..., None]).view(out, cols).to(dtype)


def code_range(bits: int) -> tuple[int, int]:
    """The signed code range of ``bits``-bit integers."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def round_to_nearest(weight: torch.Tensor, bits: int, group_size: int) -> IntWeights:
    """Symmetric round-to-nearest with one float16 scale per group (``scale = absmax / (2**(bits-1) - 1)``,
    computed in float16 first so ``codes * scale`` is exactly what a float16-scale format stores)."""
    w = weight.detach().to(torch.float32)
    out, cols = w.shape
    lo, hi = code_range(bits)
    groups = w.reshape(out, cols // group_size, group_size)
    scale = (groups.abs().amax(dim=-1) / hi).to(torch.float16)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = torch.clamp(torch.round(groups / scale.to(torch.float32)[..., None]), lo, hi)
    return IntWeights(bits, group_size, True, scale, codes.to(torch.int8).view(out, cols))


def codes_of(weight: torch.Tensor, spec: IntWeights) -> torch.Tensor:
    """Recover the integer codes of a fake-quantized ``weight`` from its scales (exact: the weight is
    ``codes * scale`` in float32)."""
    out, cols = weight.shape
    groups = weight.detach().to(torch.float32).view(out, cols // spec.group_size, spec.group_size)
    codes = torch.round(groups / spec.scale.to(torch.float32)[..., None])
    if spec.zero_point is not None:
        codes = codes + spec.zero_point.to(torch.float32)[..., None]
    lo, hi = code_range(spec.bits)
    return torch.clamp(codes, lo, hi).to(torch.int8).view(out, cols)


def storage_bits(spec: IntWeights, weights: int) -> float:
    """Bits the artifact spends on one module's weights: codes, float16 scales and (asymmetric) zero points."""
    groups = weights // spec.group_size
    return weights * spec.bits + groups * 16 + (groups * spec.bits if not spec.symmetric else 0)


# --- writing -----------------------------------------------------------------------------------------

def save_compressed(model: torch.nn.Module, directory: Path) -> dict[str, Any]:
    """Write ``model`` (whose quantized modules carry :data:`ATTRIBUTE`) to ``directory`` as a
    compressed-tensors pack-quantized Hugging Face folder. ``model`` is consumed: pass a copy."""
    from compressed_tensors.compressors import compress_module
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = output is not None and inputs is not None and output.weight is inputs.weight
    tied_key = next((f"{n}.weight" for n, m in model.named_modules() if m is output), None) if tied else None
    targets: dict[tuple, list[str]] = {}
    for name, module in model.named_modules():
        spec: Optional[IntWeights] = getattr(module, ATTRIBUTE, None)
        if spec is None:
            continue
        args = QuantizationArgs(num_bits=spec.bits, type="int", symmetric=spec.symmetric, dynamic=False,
                                strategy="group", group_size=spec.group_size)
        module.quantization_scheme = QuantizationScheme(targets=[name], weights=args)
        device = module.weight.device
        module.weight_scale = torch.nn.Parameter(spec.scale.to(device), requires_grad=False)
        zero = spec.zero_point if spec.zero_point is not None else torch.zeros_like(spec.scale, dtype=torch.int8)
        module.weight_zero_point = torch.nn.Parameter(zero.to(device=device, dtype=torch.int8), requires_grad=False)
        delattr(module, ATTRIBUTE)
        compress_module(module)
        targets.setdefault((spec.bits, spec.group_size, spec.symmetric), []).append(name)
    config = QuantizationConfig.from_pretrained(model, format=FORMAT).to_dict()
    # name every module explicitly: a class target ("Linear") would also catch modules kept in float and
    # miss the Embedding
    for group in config.get("config_groups", {}).values():
        w = group["weights"]
        group["targets"] = sorted(targets.get((w["num_bits"], w["group_size"], w["symmetric"]), []))
    model.config.quantization_config = config
    state_dict = model.state_dict()
    if tied_key is not None and getattr(inputs, "quantization_scheme", None) is not None:
        # compressing the embedding replaced its weight; the tied lm_head still holds the float tensor, which
        # from_pretrained re-ties to the unpacked table anyway: do not store it twice
        state_dict.pop(tied_key, None)
    model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)
    return config


# --- reading -----------------------------------------------------------------------------------------

def read_int_weights(directory: Path | str) -> dict[str, IntWeights]:
    """The integer weights of an ``autoround`` artifact folder, unpacked: ``{module name: IntWeights}``
    with ``codes`` int8 ``[out, in]`` and ``scale`` float16 ``[out, in / group_size]``."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors import safe_open

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text()).get("quantization_config") or {}
    if config.get("quant_method") != "compressed-tensors" or config.get("format") != FORMAT:
        raise ValueError(f"{directory} is not a compressed-tensors {FORMAT} artifact")
    schemes = {}
    for group in config["config_groups"].values():
        for target in group["targets"]:
            schemes[target] = group["weights"]
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as fh:
            for key in fh.keys():
                if key.rsplit(".", 1)[-1] in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape"):
                    tensors[key] = fh.get_tensor(key)
    result = {}
    for name, w in schemes.items():
        bits, group_size, symmetric = int(w["num_bits"]), int(w["group_size"]), bool(w["symmetric"])
        shape = torch.Size(tensors[f"{name}.weight_shape"].tolist())
        codes = unpack_from_int32(tensors[f"{name}.weight_packed"], bits, shape)
        scale = tensors[f"{name}.weight_scale"]
        zero = None
        if not symmetric:
            zero = unpack_from_int32(tensors[f"{name}.weight_zero_point"], bits, scale.shape, packed_dim=0)
        result[name] = IntWeights(bits, group_size, symmetric, scale, codes, zero)
    return result


def load_dequantized(directory: Path | str) -> torch.nn.Module:
    """Rebuild the float32 model an artifact stands for: every quantized module's weight = its dequantized codes,
    with its :class:`IntWeights` attached as :data:`ATTRIBUTE`. Reads the safetensors directly (no
    compressed-tensors load path), so it also takes what transformers' loader cannot: a quantized Embedding."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    weights = read_int_weights(directory)
    state: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as fh:
            for key in fh.keys():
                module, _, leaf = key.rpartition(".")
                if module not in weights:
                    state[key] = fh.get_tensor(key)
    for name, spec in weights.items():
        state[f"{name}.weight"] = spec.dequantize()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        tied = {f"{n}.weight" for n, m in model.named_modules() if m is model.get_output_embeddings()}
        missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{directory}: tensors missing {missing[:5]} / unexpected {unexpected[:5]}")
    modules = dict(model.named_modules())
    for name, spec in weights.items():
        setattr(modules[name], ATTRIBUTE, spec)
    return model.eval()


__all__ = ["ATTRIBUTE", "FORMAT", "IntWeights", "code_range", "codes_of", "load_dequantized", "read_int_weights", "round_to_nearest",
           "save_compressed", "storage_bits"]
