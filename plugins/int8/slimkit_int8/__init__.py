"""Int8 weights + per-token dynamic int8 activations on fast CPU kernels, with SmoothQuant
equalization, as a slimkit quantizer.

Sample config (``conf`` group ``quantizer``)::

    quantizer: int8
    quantizer.smooth: true          # SmoothQuant: fold activation outliers into the weights
    quantizer.alpha: 0.5            # migration strength (0: none, 1: all into the weights)
    quantizer.activations: int8-token   # int8 scale per token ('int8-tensor': one per call, faster prefill)
    quantizer.keep_float: 0         # keep the N Linear layers with the largest int8 error in float
    quantizer.embedding: int8       # int8 embedding table (shared with a tied int8 lm_head) or float
    quantizer.fuse: true            # run Linears that read the same input (q/k/v, gate/up) as one GEMM
    quantizer.exclude: []           # glob patterns kept in float (lm_head is quantized by default)
    quantizer.overrides: {"model.layers.0.*": float}

CLI: ``slimkit quantizer=int8 quantizer.alpha=0.6 quantizer.keep_float=4``.

Models: quantization takes every ``nn.Linear`` and GPT-2 ``Conv1D`` of any model; smoothing needs to know
where the norms and projections sit, so it takes the families of :mod:`slimkit.toolkit.families` (Llama,
Mistral, Qwen2/3, Gemma-3, Phi-3, GPT-2, OPT, GPT-NeoX) and refuses any other ``model_type`` before the
model loads (``quantizer.smooth=false`` quantizes it without smoothing).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, List, Mapping, Optional

import torch

from slimkit import ArtifactError, ConfigError, DataError, Kind, QuantizerConfig, Stage, check_range
from slimkit.core.plugin import choice, ranged
from slimkit.toolkit.quantization import plan_precision, precision_summary, swap_module
from slimkit.toolkit.storage import untied_state_dict as _untied_state_dict

from ._kernels import (FusedGroup, Int8Embedding, Int8Linear, find_shared_inputs, fuse_groups,
                       onednn_available, quantize_tokens, quantize_weight, set_prefill_kernel, simulated_int8)
from ._smooth import check_model as check_smoothable
from ._smooth import int8_errors, smooth

from slimkit.toolkit.storage import WEIGHTS  # noqa: E402  (not model.safetensors: see slimkit.toolkit.storage)
MODULE_MAP = "int8_modules.json"
EMBEDDING_MODES = ("int8", "float")
PREFILL_KERNELS = ("auto", "onednn", "int_mm")


@dataclasses.dataclass
class Int8Config(QuantizerConfig):
    """int8 backend settings (shares ``bits``/``include``/``exclude``/``overrides`` with every quantizer)."""

    #: glob patterns of Linear modules kept in float (default: none; lm_head gets its own int8 copy)
    exclude: List[str] = dataclasses.field(default_factory=list)
    #: apply SmoothQuant equalization calibrated on the calibration slice before quantizing
    smooth: bool = True
    #: SmoothQuant migration strength in [0, 1]
    alpha: float = ranged(0.5, 0.0, 1.0)
    #: int8 activations with dynamic scales: 'int8-token' (one scale per token) or 'int8-tensor' (one per call)
    activations: Optional[str] = "int8-token"
    #: keep this many quantized Linear layers with the largest (smoothed) int8 error in float
    keep_float: int = 0
    #: the input embedding table: 'int8' (per-row; shares the int8 lm_head's codes when tied) or 'float'
    embedding: str = choice("int8", EMBEDDING_MODES)
    #: fuse Linears that read the same input tensor (q/k/v, gate/up) into one int8 GEMM each
    fuse: bool = True
    #: kernel for several-row calls (prefill, scoring): 'onednn' (prepacked weights, ~10% faster prefill on
    #: SmolLM2, one more in-memory copy of the int8 weights), 'int_mm' (torch._int_mm on the stored codes),
    #: or 'auto' (onednn where this torch build has it). Results are bit-identical.
    prefill_kernel: str = choice("auto", PREFILL_KERNELS)

    ALLOWED_BITS: ClassVar[tuple[int, ...]] = (8,)
    ACTIVATIONS: ClassVar[tuple[Optional[str], ...]] = ("int8-token", "int8-tensor")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.keep_float, bool) or not isinstance(self.keep_float, int):
            raise ConfigError("quantizer.keep_float", self.keep_float, "a non-negative integer")
        check_range("quantizer.keep_float", self.keep_float, 0)
        if self.prefill_kernel == "onednn" and not onednn_available():
            raise ConfigError("quantizer.prefill_kernel", self.prefill_kernel,
                              "'int_mm' or 'auto': oneDNN's int8 linear is not available in this torch build")

    @property
    def activation_mode(self) -> str:
        """The kernels' name for the activation scheme: 'token' or 'tensor'."""
        return self.activations.split("-", 1)[1]



class Int8Quantizer(Stage):
    """SmoothQuant-equalized int8 W8A8 (per-channel weights, per-token dynamic activations).

    Prefill runs oneDNN's int8 linear on prepacked weights (``torch._int_mm`` where oneDNN is missing);
    batch-1 decode runs fbgemm's fused
    dynamic int8 linear, whose single-row scale is per token. The artifact stores int8 codes and
    float scales in safetensors and rebuilds the modules on load. Measured (benchmarks/speed.md):
    with the int8 embedding table, smoothing helps SmolLM2-135M (perplexity x1.040 -> x1.018, sentiment
    0.796 -> 0.813 of fp32's 0.836) and is slightly worse on Gemma-3-270M perplexity (x0.990 -> x1.005),
    so compare ``smooth: false`` on a new model.
    """

    kind = Kind.QUANTIZER
    name = "int8"
    artifact_weights = "runtime_kernels"
    Config = Int8Config
    requires = {"safetensors": "pip install safetensors"}

    def check_before_load(self, settings: Mapping[str, Any]) -> None:
        needs_data = self.config.smooth or self.config.keep_float > 0
        samples = (settings.get("data") or {}).get("calibration_samples") if isinstance(settings, Mapping) else None
        if needs_data and samples is not None and samples < 1:
            raise ConfigError("data.calibration_samples", samples,
                              "at least 1 when quantizer.smooth is true or quantizer.keep_float > 0")

    def check_model(self, model_config: Any) -> None:
        """Smoothing needs the model's family layout (slimkit.toolkit.families); quantizing alone takes any
        Linear/Conv1D model."""
        if self.config.smooth:
            check_smoothable(model_config)

    @staticmethod
    def make_quantized(name: str, linear: torch.nn.Module, bits: int) -> torch.nn.Module:
        """A quantized copy of one float Linear (for the shared sensitivity scan)."""
        return Int8Linear.from_float(linear)

    def apply(self, state) -> dict[str, Any]:
        cfg = self.config
        model = state.model
        plan, metrics = plan_precision(state, cfg, self.make_quantized, backend=self.name)
        chosen = {n for n, b in plan.items() if b is not None}
        embedding_name, tied = _embedding_and_tie(model)
        if cfg.embedding == "int8" and tied and "lm_head" not in chosen:
            raise ConfigError("quantizer.embedding", cfg.embedding,
                              "'float' when lm_head stays in float: the embedding is tied to lm_head, and an int8 "
                              "table beside a float lm_head would store the weights twice")
        windows = state.data.calibration
        if (cfg.smooth or cfg.keep_float) and windows.shape[0] == 0:
            raise DataError("the int8 backend needs calibration windows for quantizer.smooth / quantizer.keep_float "
                            "(set data.calibration_samples >= 1, or quantizer.smooth=false and keep_float=0)")
        if cfg.smooth:
            metrics["smoothing"] = {"alpha": cfg.alpha, "calibration_windows": int(windows.shape[0]),
                                    **smooth(model, windows, cfg.alpha, chosen)}
        if cfg.keep_float:
            # a tied lm_head carries the int8 embedding table: it is not a candidate for float
            shares_table = {"lm_head"} if cfg.embedding == "int8" and tied else set()
            errors = int8_errors(model, sorted(chosen - shares_table), windows)
            worst = sorted(errors, key=errors.get, reverse=True)[: cfg.keep_float]
            for n in worst:
                plan[n] = None
            chosen -= set(worst)
            metrics["kept_float"] = {n: round(errors[n], 5) for n in worst}
        if not chosen:
            raise ConfigError("quantizer.keep_float", cfg.keep_float, "fewer than the number of selected modules")
        if cfg.keep_float:  # the shared summary, recomputed for the final plan (before the swap)
            metrics.update(precision_summary(model, plan))
        modules = dict(model.named_modules())
        for n in sorted(chosen):
            swap_module(model, n, Int8Linear.from_float(modules[n], cfg.activation_mode))
        metrics.update({"quantized_modules": len(chosen), "weight_bits": 8, "activation_bits": 8,
                        "activation_scales": cfg.activations})
        if cfg.embedding == "int8" and embedding_name is not None:
            table = Int8Embedding.from_float(model.get_submodule(embedding_name))
            if tied:
                table.tie_to(model.get_submodule("lm_head"))
            swap_module(model, embedding_name, table)
            metrics["embedding"] = f"int8 per row ({'shared with lm_head' if tied else 'own table'})"
        else:
            metrics["embedding"] = "float"
        if cfg.fuse:
            groups = find_shared_inputs(model, _probe_ids(model))
            metrics["fused_linears"] = fuse_groups(model, groups)
            metrics["fused_groups"] = len(groups)
        metrics["prefill_kernel"] = set_prefill_kernel(model, cfg.prefill_kernel)
        state.artifact_writer = self
        return metrics

    # --- artifact ---------------------------------------------------------------------------------
    def save(self, model: torch.nn.Module, directory: Path) -> None:
        from slimkit.toolkit.storage import save_tensors

        from slimkit.toolkit.storage import save_model_config

        save_model_config(model, directory)
        modules = dict(model.named_modules())
        groups = {id(m._group): m._group for m in modules.values() if isinstance(m, Int8Linear) and m._group is not None}
        names = {id(m): n for n, m in modules.items()}
        layout: dict[str, Any] = {}
        for n, m in modules.items():
            if isinstance(m, Int8Linear):
                layout[n] = {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None,
                             "activations": m.activations}
            elif isinstance(m, Int8Embedding):
                tied = [k for k, o in modules.items() if isinstance(o, Int8Linear) and o.weight_int8 is m.weight_int8]
                layout[n] = {"kind": "embedding", "num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim,
                             "embed_scale": m.embed_scale, "tied_to": tied[0] if tied else None}
        fused = [[names[id(m)] for m in g.members] for g in groups.values()]
        # the fused members' buffers are views of one tensor: store each as its own tensor
        tensors = {k: v.clone() if v.untyped_storage().nbytes() != v.nbytes else v
                   for k, v in _untied_state_dict(model).items()}
        save_tensors(tensors, directory / WEIGHTS, metadata={"format": "pt", "quantizer": "int8"})
        kernels = {m.use_onednn for m in modules.values() if isinstance(m, Int8Linear)}
        (directory / MODULE_MAP).write_text(json.dumps(
            {"modules": layout, "fused": fused, "prefill_kernel": "int_mm" if kernels == {False} else "auto"}, indent=1))

    @classmethod
    def load(cls, directory: Path, manifest: Mapping[str, Any]) -> torch.nn.Module:
        from accelerate import init_empty_weights
        from slimkit.toolkit.storage import load_tensors
        from transformers import AutoConfig, AutoModelForCausalLM

        directory = Path(directory)
        for f in (WEIGHTS, MODULE_MAP):
            if not (directory / f).is_file():
                raise ArtifactError(f"{directory} has no {f}: not an int8 artifact")
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
        # parameters on the meta device (never allocated in fp32), buffers real: non-persistent ones such
        # as rotary inv_freq are computed by the model's constructor
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        spec_file = json.loads((directory / MODULE_MAP).read_text())
        layout, fused = (spec_file["modules"], spec_file["fused"]) if "modules" in spec_file else (spec_file, [])
        tables = {name: spec for name, spec in layout.items() if spec.get("kind") == "embedding"}
        for name, spec in layout.items():
            if name not in tables:
                swap_module(model, name, Int8Linear(spec["in_features"], spec["out_features"], spec["bias"],
                                                    spec["activations"]))
        for name, spec in tables.items():
            swap_module(model, name, Int8Embedding(spec["num_embeddings"], spec["embedding_dim"], spec["embed_scale"]))
        state_dict = load_tensors(directory / WEIGHTS)
        result = model.load_state_dict(state_dict, strict=False, assign=True)
        if result.unexpected_keys:
            raise ArtifactError(f"{directory} holds tensors the model does not have: {result.unexpected_keys[:5]}")
        for name, spec in tables.items():  # tie after loading (assign=True replaced tensors): the file holds one copy
            if spec["tied_to"]:
                table, head = model.get_submodule(name), model.get_submodule(spec["tied_to"])
                if f"{name}.weight_int8" in state_dict:
                    head.weight_int8, head.weight_scale = table.weight_int8, table.weight_scale
                else:
                    table.tie_to(head)
        if isinstance(getattr(model, "lm_head", None), torch.nn.Linear) and "lm_head.weight" not in state_dict:
            model.tie_weights()
        del state_dict  # fusion below copies the members into one tensor: let the loaded ones go
        missing = sorted(n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta)
        if missing:
            raise ArtifactError(f"{directory} is missing tensors {missing[:5]}{'…' if len(missing) > 5 else ''}")
        fuse_groups(model, fused)  # after loading, so the members become views of one concatenated weight
        set_prefill_kernel(model, spec_file.get("prefill_kernel", "auto"))
        return model.eval()


def _embedding_and_tie(model: torch.nn.Module) -> tuple[str | None, bool]:
    """The input embedding's module name (None if it is not a plain ``nn.Embedding``) and whether
    ``lm_head`` shares its weight."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, torch.nn.Embedding):
        return None, False
    name = next(n for n, m in model.named_modules() if m is embedding)
    head = getattr(model, "lm_head", None)
    return name, isinstance(head, torch.nn.Linear) and head.weight is embedding.weight


def _probe_ids(model: torch.nn.Module) -> torch.Tensor:
    """A short token sequence: enough to see which Linears read the same tensor."""
    return torch.arange(8).remainder(model.config.vocab_size).unsqueeze(0)


__all__ = ["FusedGroup", "Int8Config", "Int8Embedding", "Int8Linear", "Int8Quantizer", "quantize_tokens", "quantize_weight", "simulated_int8"]
