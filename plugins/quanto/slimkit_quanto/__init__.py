"""optimum-quanto as a slimkit quantizer: int8/int4/int2 weights (mixed per module), optional int8
activations calibrated on the calibration slice, and a budget mode that picks per-module bit-widths
from a sensitivity scan.

Sample config (``conf`` group ``quantizer``)::

    quantizer: quanto
    quantizer.bits: 4                       # weight bits: 8, 4 or 2 (4/2: groups of up to 128, see below)
    quantizer.activations: int8-tensor      # null (weight-only) or int8-tensor (calibrated static int8 activations)
    quantizer.exclude: [lm_head]            # glob patterns on module names kept in float
    quantizer.overrides: {"model.layers.0.*": 8, "model.layers.29.*": 8}
    # or: quantizer.budget_bits=4.5 (choose bit-widths from a sensitivity scan; see slimkit.toolkit.quantization)

int4/int2 use quanto's asymmetric groups: 128 input features, reduced in steps of 32 until it
divides the layer's input width (SmolLM2: 96 for the 576-wide projections, 128 for down_proj).
float8 weights are not offered yet: quanto 0.2.7's qfloat8 runs on this CPU (tiny model, lm_head kept
float: max |Δlogit| 0.026) but gave NaN logits once the (tied) lm_head was quantized too.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

import torch
from tqdm.auto import tqdm

from slimkit import ArtifactError, ConfigError, DataError, Kind, Stage
from slimkit.toolkit.modules import conv1d_to_linear
from slimkit.toolkit.quantization import MixedPrecisionConfig, plan_precision
from slimkit.toolkit.storage import untied_state_dict as _untied_state_dict

WEIGHT_BITS = (2, 4, 8)
QUANT_MAP = "quanto_qmap.json"
EXTRA = "slimkit_quanto.json"
from slimkit.toolkit.storage import WEIGHTS  # noqa: E402  (not model.safetensors: see slimkit.toolkit.storage)


@dataclasses.dataclass
class QuantoConfig(MixedPrecisionConfig):
    """optimum-quanto settings (bit-width fields shared with every backend: see ``slimkit.toolkit.quantization``)."""

    ALLOWED_BITS: ClassVar[tuple[int, ...]] = WEIGHT_BITS
    #: null (weight-only) or 'int8-tensor': static per-tensor int8 scales calibrated on data.calibration
    ACTIVATIONS: ClassVar[tuple[Optional[str], ...]] = (None, "int8-tensor")


def _qtype(bits: int):
    from optimum import quanto

    return {8: quanto.qint8, 4: quanto.qint4, 2: quanto.qint2}[bits]



def _output_quantized(module: torch.nn.Module) -> bool:
    """Whether a quanto module still quantizes its output (calibration's streamline pass may remove the hook)."""
    handle = getattr(module, "_quantize_hooks", {}).get("output")
    return handle is not None and handle.id in module._forward_hooks


def make_quantized(name: str, module: torch.nn.Module, bits: int) -> torch.nn.Module:
    """A frozen quanto copy of one float Linear at ``bits`` weight bits (the original is untouched)."""
    from optimum.quanto.nn import quantize_module

    qmodule = quantize_module(module, weights=_qtype(bits))
    qmodule.freeze()
    return qmodule


def _quantize_one_by_one(model: torch.nn.Module, plan: Mapping[str, int]) -> None:
    """Quantize and freeze the planned modules one at a time, handing freed memory back to the OS after each
    decoder layer's worth of modules. ``quantize`` on the whole model then ``freeze`` leaves every float weight
    freed but still resident (glibc keeps freed chunks below its mmap threshold), so the stage held both the float
    and the integer weights at its peak; this way it holds about one module's worth extra."""
    from optimum.quanto import freeze, quantize

    from slimkit.core.memory import release_memory

    for index, (name, bits) in enumerate(plan.items(), start=1):
        quantize(model, weights=_qtype(bits), include=[name])
        freeze(model.get_submodule(name))
        if index % 8 == 0:
            release_memory()


class QuantoQuantizer(Stage):
    """Quantize Linear layers with optimum-quanto, then freeze them into integer weights."""

    kind = Kind.QUANTIZER
    name = "quanto"
    artifact_weights = "dequantizable"
    Config = QuantoConfig
    requires = {"optimum.quanto": "pip install optimum-quanto"}
    #: bfloat16/float16 models keep their dtype (quanto's scales follow it); tested on CPU only
    supports = {"dtypes": frozenset({"float32", "bfloat16", "float16"}), "devices": frozenset({"cpu"})}

    def check_before_load(self, settings: Mapping[str, Any]) -> None:
        if self.config.activations is not None:
            samples = (settings.get("data") or {}).get("calibration_samples", 1)
            if not samples:
                raise ConfigError("data.calibration_samples", samples,
                                  "at least 1 when quantizer.activations is set (activation scales are calibrated)")

    def apply(self, state) -> dict[str, Any]:
        from optimum.quanto import Calibration, freeze, quantize

        cfg = self.config
        windows = state.data.calibration
        if cfg.activations is not None and windows.shape[0] == 0:
            raise DataError(f"quantizer.activations={cfg.activations!r} needs calibration windows to set activation scales, but the "
                            "calibration slice is empty (data.calibration_samples=0); set it to at least 1")
        # quanto quantizes nn.Linear only: GPT-2's Conv1D layers become the equivalent Linear first (same weights,
        # transposed; recorded so that load() rebuilds the same modules)
        converted = conv1d_to_linear(state.model)
        state.model._slimkit_conv1d_as_linear = converted
        plan, metrics = plan_precision(state, cfg, make_quantized, backend=self.name)
        activations = _qtype(8) if cfg.activations == "int8-tensor" else None
        by_bits: dict[int, list[str]] = {}
        for module_name, bits in plan.items():
            if bits is not None:
                by_bits.setdefault(bits, []).append(module_name)
        if not by_bits:
            raise ConfigError("quantizer.overrides", dict(cfg.overrides), "a plan that quantizes at least one module")
        if activations is None:  # weights only: freeze each module as it is quantized (see _quantize_one_by_one)
            _quantize_one_by_one(state.model, {name: bits for bits, names in by_bits.items() for name in names})
        else:  # activation scales are calibrated on the whole quantized model before it is frozen
            for bits, names in by_bits.items():
                quantize(state.model, weights=_qtype(bits), activations=activations, include=names)
        metrics.update({"quantized_modules": sum(map(len, by_bits.values())), "weight_bits": cfg.bits,
                        "activation_bits": cfg.activations, "conv1d_converted_to_linear": len(converted)})
        if activations is not None:
            with torch.no_grad(), Calibration(momentum=0.9):
                for row in tqdm(windows, desc="calibrating activations", leave=False):
                    state.model(input_ids=row[None], use_cache=False)
            metrics["calibration_windows"] = int(windows.shape[0])
        freeze(state.model)
        state.artifact_writer = self
        return metrics

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        from optimum.quanto import quantization_map
        from optimum.quanto.nn import QModuleMixin

        from slimkit.toolkit.storage import save_model_config

        save_model_config(model, directory)
        from slimkit.toolkit.storage import save_tensors  # sparse (pruned) tensors stored as bitmask + values
        save_tensors(_untied_state_dict(model), directory / WEIGHTS, metadata={"format": "pt", "quantizer": "quanto"})
        (directory / QUANT_MAP).write_text(json.dumps(quantization_map(model), indent=1))
        # Calibration(streamline=True) removes the output-quantization hook of modules whose outputs only
        # feed float ops (silu, rotary, reshape); that choice is module state quanto does not serialize.
        disabled = [n for n, m in model.named_modules()
                    if isinstance(m, QModuleMixin) and m.activation_qtype is not None and not _output_quantized(m)]
        output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        (directory / EXTRA).write_text(json.dumps({
            "format": 1, "output_quantization_disabled": disabled,
            "conv1d_as_linear": list(getattr(model, "_slimkit_conv1d_as_linear", [])),
            "lm_head_quantized": isinstance(output_embeddings, QModuleMixin)}, indent=1))

    @classmethod
    def load(cls, directory: Path, manifest: Mapping[str, Any]) -> torch.nn.Module:
        from optimum.quanto import requantize
        from transformers import AutoConfig, AutoModelForCausalLM

        from accelerate import init_empty_weights

        from slimkit.core.artifact import saved_dtype

        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
        # parameters on the meta device (requantize materialises them from the file, nothing is initialised or
        # held twice); buffers real: non-persistent ones such as rotary inv_freq must be computed
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=saved_dtype(config))
        from slimkit.toolkit.storage import load_tensors  # reads plain and sparse safetensors alike
        state_dict = load_tensors(directory / WEIGHTS)
        qmap = json.loads((directory / QUANT_MAP).read_text())
        extra = json.loads((directory / EXTRA).read_text()) if (directory / EXTRA).is_file() else {}
        converted = conv1d_to_linear(model, extra.get("conv1d_as_linear", []))
        if len(converted) != len(extra.get("conv1d_as_linear", [])):
            raise ArtifactError(f"{directory / EXTRA} lists Conv1D modules the model does not have: "
                                f"{sorted(set(extra['conv1d_as_linear']) - set(converted))[:5]}")
        model._slimkit_conv1d_as_linear = converted
        requantize(model, state_dict, qmap, device=torch.device("cpu"))
        modules = dict(model.named_modules())
        for name in extra.get("output_quantization_disabled", []):
            if name not in modules:
                raise ArtifactError(f"{directory / EXTRA} names module {name!r}, which the model does not have")
            modules[name].disable_output_quantization()
        if not extra.get("lm_head_quantized", False):
            model.tie_weights()  # a quantized lm_head has its own weights; do not re-tie it to the embedding
        expected = set(_untied_state_dict(model))
        missing = sorted(expected - set(state_dict))
        if missing:
            raise ArtifactError(f"{directory} is missing tensors {missing[:5]}{'…' if len(missing) > 5 else ''}")
        return model.eval()
