"""optimum-quanto as a slimkit quantizer: int8/int4/int2 weights, optional int8 activations
calibrated on the calibration slice, module include/exclude patterns.

Sample config (``conf`` group ``quantizer``)::

    quantizer: quanto
    quantizer.bits: 4             # weight bits: 8, 4 or 2
    quantizer.activations: 8      # null (weight-only) or 8 (calibrated int8 activations)
    quantizer.exclude: [lm_head]  # glob patterns on module names kept in float
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, List, Mapping, Optional

import torch
from tqdm.auto import tqdm

from slimkit import ArtifactError, Kind, Stage, StageConfig, check_choice
from slimkit.modules import select_modules

WEIGHT_BITS = (2, 4, 8)
ACTIVATION_BITS = (None, 8)
QUANT_MAP = "quanto_qmap.json"
WEIGHTS = "model.safetensors"


@dataclasses.dataclass
class QuantoConfig(StageConfig):
    """optimum-quanto settings."""

    #: weight bits: 8, 4 or 2 (4 and 2 use groups of 128, quanto's default)
    bits: int = 8
    #: activation bits: null for weight-only, or 8 (needs calibration data)
    activations: Optional[int] = None
    #: glob patterns of Linear modules to quantize
    include: List[str] = dataclasses.field(default_factory=lambda: ["*"])
    #: glob patterns of Linear modules to keep in float (lm_head is tied to the embedding)
    exclude: List[str] = dataclasses.field(default_factory=lambda: ["lm_head"])

    def __post_init__(self) -> None:
        check_choice("quantizer.bits", self.bits, WEIGHT_BITS)
        check_choice("quantizer.activations", self.activations, ACTIVATION_BITS)


def _qtype(bits: int):
    from optimum import quanto

    return {8: quanto.qint8, 4: quanto.qint4, 2: quanto.qint2}[bits]


def _untied_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared storage kept once (safetensors refuses shared tensors)."""
    seen: set[tuple[int, int, tuple]] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous()
    return out


class QuantoQuantizer(Stage):
    """Quantize Linear layers with optimum-quanto, then freeze them into integer weights."""

    kind = Kind.QUANTIZER
    name = "quanto"
    Config = QuantoConfig
    requires = {"optimum.quanto": "pip install optimum-quanto"}

    def apply(self, state) -> dict[str, Any]:
        from optimum.quanto import Calibration, freeze, quantize

        cfg = self.config
        chosen = select_modules(state.model, cfg.include, cfg.exclude, prefix="quantizer")
        activations = _qtype(cfg.activations) if cfg.activations else None
        quantize(state.model, weights=_qtype(cfg.bits), activations=activations, include=list(chosen))
        metrics: dict[str, Any] = {"quantized_modules": len(chosen), "weight_bits": cfg.bits,
                                   "activation_bits": cfg.activations}
        if activations is not None:
            windows = state.data.calibration
            with torch.no_grad(), Calibration(momentum=0.9):
                for row in tqdm(windows, desc="calibrating activations", leave=False):
                    state.model(input_ids=row[None], use_cache=False)
            metrics["calibration_windows"] = int(windows.shape[0])
        freeze(state.model)
        state.artifact_writer = self
        return metrics

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        from optimum.quanto import quantization_map
        from safetensors.torch import save_file

        model.config.save_pretrained(directory)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(directory)
        save_file(_untied_state_dict(model), str(directory / WEIGHTS), metadata={"format": "pt", "quantizer": "quanto"})
        (directory / QUANT_MAP).write_text(json.dumps(quantization_map(model), indent=1))

    @classmethod
    def load(cls, directory: Path, manifest: Mapping[str, Any]) -> torch.nn.Module:
        from optimum.quanto import requantize
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
        # a real (not meta) skeleton: non-persistent buffers such as rotary inv_freq must be computed
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state_dict = load_file(str(directory / WEIGHTS))
        qmap = json.loads((directory / QUANT_MAP).read_text())
        requantize(model, state_dict, qmap, device=torch.device("cpu"))
        model.tie_weights()
        expected = set(_untied_state_dict(model))
        missing = sorted(expected - set(state_dict))
        if missing:
            raise ArtifactError(f"{directory} is missing tensors {missing[:5]}{'…' if len(missing) > 5 else ''}")
        return model.eval()
