"""bitsandbytes as a slimkit quantizer: LLM.int8 (8-bit, optional outlier threshold) and 4-bit
NF4/FP4 weights with optional double quantization, mixed per module, running natively on CPU.

Sample config (``conf`` group ``quantizer``)::

    quantizer: bnb
    quantizer.bits: 4                 # 8 (LLM.int8) or 4 (NF4/FP4, blocks of 64)
    quantizer.quant_type: nf4         # 4-bit data type: nf4 or fp4
    quantizer.double_quant: true      # quantize the 4-bit block scales too
    quantizer.compute_dtype: float32  # 4-bit matmul dtype: float32 or bfloat16
    quantizer.threshold: 6.0          # LLM.int8 outlier threshold on activations (0: pure int8)
    quantizer.overrides: {"model.layers.0.*": 8, lm_head: null}
    # or: quantizer.budget_bits=6 (choose 4/8 per module from a sensitivity scan; see slimkit.toolkit.quantization)

Linear modules are replaced by ``bitsandbytes.nn.Linear8bitLt`` / ``Linear4bit`` directly (not through
``from_pretrained(quantization_config=...)``), so one model can mix 4-bit, 8-bit and float modules
after any earlier stage. The artifact is safetensors plus ``bnb_plan.json``.

CPU pitfall handled here: bitsandbytes repacks 4-bit weights into a CPU layout (block scales cast to
bfloat16) on the first forward pass, and its ``state_dict`` then un-packs them lossily and in place
(without double quantization the scales even come back transposed). This plugin keeps each 4-bit
module's canonical quantized tensors from quantization time and saves those, so save → reload gives
the same logits as the model in memory, forward pass or not.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from slimkit import ArtifactError, Kind, Stage, check_choice, check_range
from slimkit.toolkit.modules import in_features, out_features, weight_matrix
from slimkit.toolkit.quantization import MixedPrecisionConfig, plan_precision, swap_module

BITS = (4, 8)
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("float32", "bfloat16")
PLAN = "bnb_plan.json"
from slimkit.toolkit.storage import WEIGHTS  # noqa: E402  (not model.safetensors: see slimkit.toolkit.storage)

_CANONICAL = "_slimkit_canonical"


@dataclasses.dataclass
class BnbConfig(MixedPrecisionConfig):
    """bitsandbytes settings (bit-width fields shared with every backend: see ``slimkit.toolkit.quantization``)."""

    #: 4-bit data type: 'nf4' (normal float) or 'fp4'
    quant_type: str = "nf4"
    #: quantize the 4-bit block scales (absmax) too, saving ~0.37 bits per weight
    double_quant: bool = True
    #: dtype the 4-bit matmul runs in: 'float32' or 'bfloat16'
    compute_dtype: str = "float32"
    #: LLM.int8 outlier threshold: activation columns above it run in float (0 disables the decomposition)
    threshold: float = 6.0
    #: 4-bit block size (weights per absmax scale)
    blocksize: int = 64

    ALLOWED_BITS: ClassVar[tuple[int, ...]] = BITS

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("quantizer.quant_type", self.quant_type, QUANT_TYPES)
        check_choice("quantizer.compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        check_range("quantizer.threshold", self.threshold, 0.0)
        check_choice("quantizer.blocksize", self.blocksize, (32, 64, 128, 256, 512, 1024, 2048, 4096))


def _spec(cfg: BnbConfig, bits: int) -> dict[str, Any]:
    if bits == 8:
        return {"bits": 8, "threshold": float(cfg.threshold)}
    return {"bits": 4, "quant_type": cfg.quant_type, "double_quant": bool(cfg.double_quant),
            "compute_dtype": cfg.compute_dtype, "blocksize": int(cfg.blocksize)}


def _empty_module(linear: torch.nn.Module, spec: Mapping[str, Any]) -> torch.nn.Module:
    import bitsandbytes as bnb

    has_bias = linear.bias is not None
    n_in, n_out = in_features(linear), out_features(linear)
    if spec["bits"] == 8:
        return bnb.nn.Linear8bitLt(n_in, n_out, bias=has_bias, has_fp16_weights=False,
                                   threshold=spec["threshold"], device="meta")
    return bnb.nn.Linear4bit(n_in, n_out, bias=has_bias,
                             compute_dtype=getattr(torch, spec["compute_dtype"]),
                             compress_statistics=spec["double_quant"], quant_type=spec["quant_type"], device="meta")


def _set_bias(module: torch.nn.Module, bias: torch.Tensor | None) -> None:
    if bias is not None:
        module.bias = torch.nn.Parameter(bias.detach().clone().float(), requires_grad=False)


def _stash_canonical(module: torch.nn.Module) -> None:
    """Remember the 4-bit tensors as quantized, before any CPU repacking (see the module docstring)."""
    state = module.weight.quant_state
    tensors = {"weight": module.weight.data.detach().clone()}
    tensors.update({f"weight.{k}": v.detach().clone() for k, v in state.as_dict(packed=True).items()})
    setattr(module, _CANONICAL, tensors)


def quantize_linear(linear: torch.nn.Module, spec: Mapping[str, Any]) -> torch.nn.Module:
    """A bitsandbytes copy of a float Linear (or GPT-2 ``Conv1D``, transposed) per ``spec`` (the original is untouched)."""
    from bitsandbytes.nn import Int8Params, Params4bit

    module = _empty_module(linear, spec)
    weight = weight_matrix(linear).detach().clone().float().contiguous()
    if spec["bits"] == 8:
        module.weight = Int8Params(weight, requires_grad=False, has_fp16_weights=False).to("cpu")
    else:
        module.weight = Params4bit(weight, requires_grad=False, blocksize=spec["blocksize"],
                                   compress_statistics=spec["double_quant"], quant_type=spec["quant_type"],
                                   module=module).to("cpu")
        _stash_canonical(module)
    _set_bias(module, linear.bias)
    return module.eval()


class _Frozen(torch.nn.Module):
    """Stand-in that exposes fixed tensors to ``state_dict`` (used while saving a 4-bit module)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        super().__init__()
        self._tensors = dict(tensors)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for key, value in self._tensors.items():
            destination[prefix + key] = value


def _untied(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from slimkit.toolkit.storage import unique_tensors

    return unique_tensors(state_dict)


class BnbQuantizer(Stage):
    """Replace Linear layers by bitsandbytes LLM.int8 / 4-bit NF4/FP4 layers (mixed per module)."""

    kind = Kind.QUANTIZER
    name = "bnb"
    artifact_weights = "runtime_kernels"
    Config = BnbConfig
    requires = {"bitsandbytes": "pip install bitsandbytes"}

    def make_quantized(self, name: str, module: torch.nn.Module, bits: int) -> torch.nn.Module:
        """The scan's one-module quantizer."""
        return quantize_linear(module, _spec(self.config, bits))

    def apply(self, state) -> dict[str, Any]:
        cfg = self.config
        plan, metrics = plan_precision(state, cfg, self.make_quantized, backend=self.name,
                                       label=lambda bits: "int8" if bits == 8 else cfg.quant_type)
        modules = dict(state.model.named_modules())
        specs = {}
        for module_name, bits in plan.items():
            if bits is None:
                continue
            specs[module_name] = _spec(cfg, bits)
            swap_module(state.model, module_name, quantize_linear(modules[module_name], specs[module_name]))
        state.model._slimkit_bnb_plan = specs
        metrics.update({"quantized_modules": len(specs), "weight_bits": cfg.bits,
                        "quant_type": cfg.quant_type if 4 in {s["bits"] for s in specs.values()} else None})
        state.artifact_writer = self
        return metrics

    def keeps_sparse_storage(self) -> bool:
        """4-bit codes are packed two per byte (NF4/FP4 zero is not the byte 0): zeros cannot be stored sparsely."""
        cfg = self.config
        return cfg.bits == 8 and not any(str(v) == "4" for v in cfg.overrides.values()) and cfg.budget_bits is None

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        from slimkit.toolkit.storage import save_tensors

        specs = getattr(model, "_slimkit_bnb_plan", None)
        if specs is None:
            raise ArtifactError("this model was not quantized by the bnb backend (no plan to save)")
        from slimkit.toolkit.storage import save_model_config

        save_model_config(model, directory)
        swapped = {}
        try:  # never call Linear4bit's own state_dict: it un-packs CPU-packed weights lossily and in place
            for name, spec in specs.items():
                module = model.get_submodule(name)
                if spec["bits"] == 4:
                    tensors = dict(getattr(module, _CANONICAL))
                    if module.bias is not None:
                        tensors["bias"] = module.bias.detach()
                    swapped[name] = swap_module(model, name, _Frozen(tensors))
            state_dict = _untied(model.state_dict())
        finally:
            for name, module in swapped.items():
                swap_module(model, name, module)
        save_tensors(state_dict, directory / WEIGHTS, metadata={"format": "pt", "quantizer": "bnb"})
        lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        lm_name = next((n for n, m in model.named_modules() if m is lm_head), None)
        (directory / PLAN).write_text(json.dumps({"format": 1, "modules": specs,
                                                  "output_embeddings_quantized": lm_name in specs}, indent=1))

    @classmethod
    def load(cls, directory: Path, manifest: Mapping[str, Any]) -> torch.nn.Module:
        from bitsandbytes.nn import Int8Params, Params4bit
        from transformers import AutoConfig, AutoModelForCausalLM

        from slimkit.toolkit.storage import load_tensors

        info = json.loads((directory / PLAN).read_text())
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state_dict = load_tensors(directory / WEIGHTS)
        specs = info["modules"]
        for name, spec in specs.items():
            try:
                linear = model.get_submodule(name)
                prefix = name + "."
                module = _empty_module(linear, spec)
                data = state_dict.pop(prefix + "weight")
                if spec["bits"] == 8:
                    weight = Int8Params(data, requires_grad=False, has_fp16_weights=False)
                    weight.CB, weight.SCB = weight.data, state_dict.pop(prefix + "SCB").float()
                    state_dict.pop(prefix + "weight_format", None)
                    module.weight = weight
                else:
                    stats = {k[len(prefix) + len("weight."):]: state_dict.pop(k) for k in list(state_dict)
                             if k.startswith(prefix + "weight.")}
                    module.weight = Params4bit.from_prequantized(data, stats, device="cpu", module=module)
                    _stash_canonical(module)
                bias = state_dict.pop(prefix + "bias", None)
                _set_bias(module, bias)
            except (KeyError, AttributeError, ValueError) as exc:
                raise ArtifactError(f"{directory}: cannot rebuild the bnb module {name!r}: {exc}") from exc
            swap_module(model, name, module.eval())
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if not info.get("output_embeddings_quantized"):
            model.tie_weights()
        if unexpected:
            raise ArtifactError(f"{directory} has tensors the model does not use: {unexpected[:5]}")
        present = set(_untied(model.state_dict()))
        lost = sorted(k for k in missing if k in present and not any(k.startswith(n + ".") for n in specs))
        if lost:
            raise ArtifactError(f"{directory} is missing tensors {lost[:5]}{'…' if len(lost) > 5 else ''}")
        model._slimkit_bnb_plan = specs
        return model.eval()
