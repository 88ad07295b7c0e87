"""slimkit exporter: OpenVINO IR, with int8/int4 weight compression through NNCF.

Sample config (``conf`` group ``exporter``)::

    exporter: openvino
    exporter.openvino.weights: int8         # auto (= fp32: slimkit's float weights as they are), fp32, int8, int4
    exporter.openvino.group_size: 64         # int4: weights quantized in groups of this many input channels
    exporter.openvino.symmetric: false       # int8/int4: symmetric (no zero point) or asymmetric
    exporter.openvino.inference_precision: f32 # f32, or bf16 (OpenVINO's own default on CPUs with AVX-512 BF16/AMX)

The model in memory (a structurally pruned one with its per-layer sizes) is captured with
``torch.export`` with an explicit KV cache in its signature (``input_ids``, ``past.<i>.key``/``.value``
→ ``logits``, ``present.<i>.key``/``.value``), converted with ``openvino.convert_model`` and, for int8/int4,
compressed with ``nncf.compress_weights`` (data-free round-to-nearest). optimum-intel is not used: it
does not co-install with transformers>=5.24. :meth:`OpenVinoExporter.open` compiles it pinned to
``INFERENCE_NUM_THREADS`` with the inference precision recorded at export.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from slimkit import ArtifactError, ConfigError, check_choice
from slimkit.core.plugin import Exporter, ExporterConfig
from slimkit.toolkit.quantization import float_model

__all__ = ["OpenVinoConfig", "OpenVinoExporter", "OpenVinoSession"]

WEIGHTS = ("auto", "fp32", "int8", "int4")
PRECISIONS = ("f32", "bf16")
#: model types whose export was checked against PyTorch logits (tests and benchmarks/deploy_runtimes.py)
CHECKED_MODEL_TYPES = ("llama",)
#: artifact writers whose weights are not float tensors torch.export can capture
QUANTIZED_WRITERS = {
    "bnb": "bitsandbytes NF4/FP4/LLM.int8 weights",
    "int8": "the int8 quantizer's SmoothQuant-scaled W8A8 weights and fused kernels",
}
MODEL_XML = "openvino_model.xml"
SETTINGS_FILE = "slimkit_export.json"


@dataclasses.dataclass
class OpenVinoConfig(ExporterConfig):
    """OpenVINO export settings."""

    #: auto/fp32 (slimkit's float weights as they are), int8 (per output channel) or int4 (groups; NNCF keeps
    #: the embedding and the lm_head in int8, its default "backup" precision)
    weights: str = "auto"
    #: int4: group size along the input channels (must divide them: SmolLM2's 576 takes 64 or 32, not 128)
    group_size: int = 64
    #: symmetric (signed codes, no zero point) or asymmetric (NNCF's default for int8)
    symmetric: bool = False
    #: compute precision OpenVINO runs with: f32, or bf16 (its default on this kind of CPU; faster, less exact)
    inference_precision: str = "f32"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("exporter.openvino.weights", self.weights, WEIGHTS)
        check_choice("exporter.openvino.inference_precision", self.inference_precision, PRECISIONS)
        if not isinstance(self.group_size, int) or self.group_size < 8 or self.group_size & (self.group_size - 1):
            raise ConfigError("exporter.openvino.group_size", self.group_size, "a power of two >= 8 (e.g. 32, 64, 128)")
        if not isinstance(self.symmetric, bool):
            raise ConfigError("exporter.openvino.symmetric", self.symmetric, "true or false")

    @property
    def bits(self) -> str:
        return "fp32" if self.weights == "auto" else self.weights


class OpenVinoExporter(Exporter):
    """torch.export → openvino.convert_model (+ nncf.compress_weights); serve with OpenVINO on the CPU."""

    name = "openvino"
    runtime = "openvino"
    Config = OpenVinoConfig
    requires = {"openvino": "pip install slimkit-openvino (or: pip install openvino nncf)",
                "nncf": "pip install nncf"}
    config: OpenVinoConfig

    def check_model(self, model_config, writer: str | None) -> None:
        model_type = getattr(model_config, "model_type", None)
        if model_type not in CHECKED_MODEL_TYPES:
            raise ConfigError("exporter", "openvino", "a model of type " + ", ".join(CHECKED_MODEL_TYPES),
                              f"model type {model_type!r}: its OpenVINO export has not been checked against PyTorch "
                              "logits by this exporter; try exporter=onnx")
        if writer in QUANTIZED_WRITERS:
            raise ConfigError(
                "exporter", "openvino", "a float artifact: no slimkit quantizer, or a pruner/distiller only",
                f"quantizer={writer} writes {QUANTIZED_WRITERS[writer]}, which do not trace into OpenVINO ops. "
                f"Alternatives: drop the quantizer (~quantizer) and let NNCF quantize "
                f"(exporter.openvino.weights=int8 or int4), or exporter=gguf")
        if self.config.bits == "int4":
            for key in ("hidden_size", "intermediate_size"):
                size = getattr(model_config, key, None)
                if isinstance(size, int) and size % self.config.group_size:
                    raise ConfigError("exporter.openvino.group_size", self.config.group_size,
                                      f"a power of two dividing {key}={size} (e.g. 32 or 64)",
                                      "NNCF int4 groups must tile each weight's input channels")

    def export(self, artifact_dir: Path, model, tokenizer, out_dir: Path) -> dict[str, Any]:
        import openvino

        self.check_model(model.config, None)
        out_dir = Path(out_dir)
        model, dequantized = float_model(model)
        ov_model = convert(model)
        scheme = self.scheme()
        if self.config.bits != "fp32":
            import nncf

            mode = {("int8", False): nncf.CompressWeightsMode.INT8_ASYM, ("int8", True): nncf.CompressWeightsMode.INT8_SYM,
                    ("int4", False): nncf.CompressWeightsMode.INT4_ASYM, ("int4", True): nncf.CompressWeightsMode.INT4_SYM}
            kwargs = {"group_size": self.config.group_size, "ratio": 1.0} if self.config.bits == "int4" else {}
            ov_model = nncf.compress_weights(ov_model, mode=mode[(self.config.bits, self.config.symmetric)], **kwargs)
        openvino.save_model(ov_model, out_dir / MODEL_XML, compress_to_fp16=False)
        tokenizer.save_pretrained(out_dir)
        settings = {"exporter": self.name, "inference_precision": self.config.inference_precision,
                    "kv_shapes": _kv_shapes(model), **scheme}
        (out_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        quantized = self.config.bits != "fp32"
        notes = (f"{scheme['scheme']}; inference precision {self.config.inference_precision}" if quantized else
                 f"fp32 weights as slimkit left them; inference precision {self.config.inference_precision}")
        if dequantized:
            notes = (f"{dequantized} quantized weight matrices (quanto) dequantized exactly to fp32 first; "
                     "activation quantization is not carried; " + notes)
        return {"format": f"openvino-ir-{self.config.bits}", "requantized": quantized, "notes": notes,
                "dequantized_modules": dequantized,
                "inference_precision": self.config.inference_precision, **scheme}

    def scheme(self) -> dict[str, Any]:
        """The weight format, stated fully (for the report)."""
        cfg = self.config
        kind = "symmetric" if cfg.symmetric else "asymmetric (zero point)"
        if cfg.bits == "fp32":
            return {"weights": "fp32", "scheme": "fp32"}
        if cfg.bits == "int8":
            return {"weights": "int8", "symmetric": cfg.symmetric,
                    "scheme": f"NNCF int8 {kind}, per output channel, data-free round-to-nearest, all weights"}
        return {"weights": "int4", "symmetric": cfg.symmetric, "group_size": cfg.group_size,
                "scheme": f"NNCF int4 {kind}, groups of {cfg.group_size}, data-free round-to-nearest; embedding and "
                          "lm_head in int8 asymmetric per channel (NNCF's backup precision)"}

    @classmethod
    def open(cls, out_dir: Path, threads: int = 1) -> "OpenVinoSession":
        cls.check_dependencies()
        return OpenVinoSession(Path(out_dir), threads)


class _WithCache(torch.nn.Module):
    """The decoder with its KV cache as plain tensors: (input_ids, k0, v0, k1, v1, ...) -> (logits, k0', v0', ...)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, past: list[torch.Tensor]):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i, layer in enumerate(cache.layers):
            key, value = past[2 * i], past[2 * i + 1]
            layer.lazy_initialization(key, value)      # then hold the given tensors (no empty-tensor concat)
            layer.keys, layer.values = key, value
        start = past[0].shape[2]
        positions = torch.arange(start, start + input_ids.shape[1]).unsqueeze(0)
        out = self.model(input_ids=input_ids, past_key_values=cache, position_ids=positions,
                         cache_position=positions[0], use_cache=True)
        present = []
        for layer in cache.layers:
            present += [layer.keys, layer.values]
        return out.logits, *present


def _kv_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(kv heads, head dim) of each decoder layer, read from the projections (per-layer sizes allowed)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return [(layer.self_attn.k_proj.out_features // head_dim, head_dim) for layer in model.model.layers]


def convert(model: torch.nn.Module):
    """The model as an OpenVINO model with named inputs/outputs and dynamic batch, sequence and cache lengths."""
    import openvino
    from torch.export import Dim

    shapes = _kv_shapes(model)
    batch, seq, past = Dim("batch", min=1, max=256), Dim("seq", min=1, max=65536), Dim("past", min=0, max=65536)
    # example sizes above 1: torch.export specializes dimensions of size 0 and 1
    ids = torch.zeros(2, 3, dtype=torch.long)
    cache = [torch.zeros(2, heads, 2, dim) for heads, dim in shapes for _ in (0, 1)]
    wrapper = _WithCache(model).eval()
    try:
        with torch.no_grad():
            exported = torch.export.export(wrapper, (ids, cache), dynamic_shapes={
                "input_ids": {0: batch, 1: seq}, "past": [{0: batch, 2: past} for _ in cache]})
        ov_model = openvino.convert_model(exported)
    except Exception as exc:  # torch.export / conversion errors have many types
        raise ArtifactError(f"could not capture {type(model).__name__} for OpenVINO: {type(exc).__name__}: {exc}") from exc
    names = ["input_ids"] + [f"past.{i}.{part}" for i in range(len(shapes)) for part in ("key", "value")]
    for port, name in zip(ov_model.inputs, names):
        port.get_tensor().set_names({name})
    outputs = ["logits"] + [f"present.{i}.{part}" for i in range(len(shapes)) for part in ("key", "value")]
    for port, name in zip(ov_model.outputs, outputs):
        port.get_tensor().set_names({name})
    return ov_model


class OpenVinoSession:
    """An OpenVINO export compiled for the CPU, pinned to ``threads``."""

    def __init__(self, folder: Path, threads: int = 1):
        import openvino

        xml = folder / MODEL_XML
        if not xml.is_file() or not (folder / SETTINGS_FILE).is_file():
            raise ArtifactError(f"{str(folder)!r} holds no {MODEL_XML} and {SETTINGS_FILE}: not an openvino export")
        settings = json.loads((folder / SETTINGS_FILE).read_text())
        self.inference_precision = settings.get("inference_precision", "f32")
        self.runtime_version = f"openvino {openvino.get_version()}"
        core = openvino.Core()
        self._compiled = core.compile_model(str(xml), "CPU", {
            "INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": self.inference_precision})
        self._request = self._compiled.create_infer_request()
        #: (kv heads, head dim) per layer; each layer has a key and a value input
        self._cache_shapes = [tuple(shape) for shape in settings["kv_shapes"] for _ in (0, 1)]

    def _empty_cache(self, batch: int):
        import numpy as np

        return [np.zeros((batch, heads, 0, dim), np.float32) for heads, dim in self._cache_shapes]

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits ``[B, T, V]`` (float32) with an empty KV cache."""
        ids = input_ids.to(torch.int64).numpy()
        result = self._request.infer([ids, *self._empty_cache(ids.shape[0])])
        return torch.from_numpy(result[0].copy()).float()

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
        """Greedy decoding of exactly ``new_tokens`` tokens with the KV cache (passed in and out as tensors)."""
        import numpy as np

        current = input_ids.reshape(1, -1).to(torch.int64).numpy()
        cache = self._empty_cache(1)
        tokens: list[int] = []
        for _ in range(int(new_tokens)):
            result = self._request.infer([current, *cache])
            logits = result[0]
            cache = [result[i].copy() for i in range(1, len(cache) + 1)]
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            current = np.array([[token]], dtype=np.int64)
        return tokens
