"""slimkit exporter: OpenVINO IR, with int8/int4 weight compression through NNCF.

Sample config (``conf`` group ``exporter``)::

    exporter: openvino
    exporter.openvino.weights: int8         # auto (slimkit's weights as they are: integer codes carried, floats fp32), fp32, int8, int4
    exporter.openvino.group_size: 64         # int4: weights quantized in groups of this many input channels
    exporter.openvino.symmetric: false       # int8/int4: symmetric (no zero point) or asymmetric
    exporter.openvino.inference_precision: f32 # f32, or bf16 (OpenVINO's own default on CPUs with AVX-512 BF16/AMX)
    exporter.openvino.kv_cache_precision: auto # auto (= inference precision), f32, bf16, u8 (OpenVINO's CPU default)
    exporter.openvino.dynamic_quantization: auto # auto (OpenVINO's CPU default: int8 activations in groups of 32 in
                                             # compressed-weight MatMuls) or off (float activations: weights computed exactly)

The model in memory (a structurally pruned one with its per-layer sizes) is captured with
``torch.export`` with its KV cache in the signature, converted with ``openvino.convert_model``, made
**stateful** the way OpenVINO's LLM tooling (optimum-intel, openvino-genai) lays out an LLM — inputs
``input_ids``, ``attention_mask``, ``position_ids``, ``beam_idx``, output ``logits``, the KV cache held
as ReadValue/Assign state that the CPU plugin fuses into its attention kernel (:func:`make_stateful`) —
and, for int8/int4, compressed with ``nncf.compress_weights`` (data-free round-to-nearest).

slimkit's integer codes are carried, not re-quantized (:mod:`slimkit_openvino.codes`): every module of an
artifact that carries codes (``quantizer=autoround``: int4/int8, symmetric or not, any group size that tiles
the layer) is written as OpenVINO compressed weights from its own codes and float16 scales, in the layout NNCF
writes; ``weights=auto`` leaves every other weight fp32, ``weights=int8|int4`` lets NNCF compress the others.
optimum-intel is not used: it does not co-install with transformers>=5.24. :meth:`OpenVinoExporter.open`
compiles it pinned to ``INFERENCE_NUM_THREADS`` with the precisions recorded at export.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from slimkit import ArtifactError, ConfigError, check_choice, check_range
from slimkit.core.plugin import Exporter, ExporterConfig
from slimkit.deploy.holdings import int_weight_modules, refuse_runtime_kernels, summarize_reasons
from slimkit.toolkit.quantization import float_model
from slimkit_openvino.codes import carry_codes

__all__ = ["OpenVinoConfig", "OpenVinoExporter", "OpenVinoSession"]

WEIGHTS = ("auto", "fp32", "int8", "int4")
PRECISIONS = ("f32", "bf16")
KV_CACHE_PRECISIONS = ("auto", "f32", "bf16", "u8")
DYNAMIC_QUANTIZATION = ("auto", "off")
#: model types whose export was checked against PyTorch logits and greedy decoding (plugins/openvino/tests;
#: SmolLM2 in benchmarks/deploy_runtimes.py; Gemma-3 on a tiny config with a sliding window shorter than the test)
CHECKED_MODEL_TYPES = ("llama", "gemma3_text")
MODEL_XML = "openvino_model.xml"
SETTINGS_FILE = "slimkit_export.json"


@dataclasses.dataclass
class OpenVinoConfig(ExporterConfig):
    """OpenVINO export settings."""

    #: auto (slimkit's weights as they are: modules with integer codes carried as compressed weights, the rest
    #: fp32), fp32, int8 (NNCF, per output channel) or int4 (NNCF, groups; it keeps the embedding and the lm_head
    #: in int8, its default "backup" precision); under int8/int4 carried codes still win over NNCF's
    weights: str = "auto"
    #: int4: group size along the input channels (must divide them: SmolLM2's 576 takes 64 or 32, not 128)
    group_size: int = 64
    #: symmetric (signed codes, no zero point) or asymmetric (NNCF's default for int8)
    symmetric: bool = False
    #: int4: the fraction of the decoder's weights NNCF puts in int4 (1.0: all of them); NNCF keeps the rest in
    #: int8, choosing the layers by its own data-free sensitivity criterion (nncf.compress_weights' ``ratio``)
    int4_ratio: float = 1.0
    #: compute precision OpenVINO runs with: f32, or bf16 (its default on this kind of CPU; faster, less exact)
    inference_precision: str = "f32"
    #: precision of the KV cache held in the model's state: auto (= the inference precision, so decode
    #: matches prefill), f32, bf16, or u8 (OpenVINO's own default on CPUs: per-token quantized)
    kv_cache_precision: str = "auto"
    #: activations of compressed-weight MatMuls: auto (OpenVINO's CPU default, dynamically quantized to int8 in
    #: groups of 32: faster, not exact) or off (float: the runtime computes exactly the exported weights)
    dynamic_quantization: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("exporter.openvino.weights", self.weights, WEIGHTS)
        check_choice("exporter.openvino.inference_precision", self.inference_precision, PRECISIONS)
        check_choice("exporter.openvino.kv_cache_precision", self.kv_cache_precision, KV_CACHE_PRECISIONS)
        check_choice("exporter.openvino.dynamic_quantization", self.dynamic_quantization, DYNAMIC_QUANTIZATION)
        if not isinstance(self.group_size, int) or self.group_size < 8 or self.group_size & (self.group_size - 1):
            raise ConfigError("exporter.openvino.group_size", self.group_size, "a power of two >= 8 (e.g. 32, 64, 128)")
        if not isinstance(self.symmetric, bool):
            raise ConfigError("exporter.openvino.symmetric", self.symmetric, "true or false")
        check_range("exporter.openvino.int4_ratio", self.int4_ratio, 0.0, 1.0, low_open=True)
        if self.int4_ratio != 1.0 and self.bits != "int4":
            raise ConfigError("exporter.openvino.int4_ratio", self.int4_ratio, "1.0 unless "
                              "exporter.openvino.weights=int4", "it splits the weights between int4 and int8")

    @property
    def bits(self) -> str:
        return "fp32" if self.weights == "auto" else self.weights

    @property
    def cache_precision(self) -> str:
        return self.inference_precision if self.kv_cache_precision == "auto" else self.kv_cache_precision


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
        refuse_runtime_kernels(  # asked of the writer: slimkit.deploy.holdings
            "openvino", writer, "do not trace into OpenVINO ops",
            "drop the quantizer (~quantizer) and let NNCF quantize (exporter.openvino.weights=int8 or int4), or "
            "exporter=gguf")
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
        codes = int_weight_modules(model)
        model, dequantized = float_model(model)
        ov_model = convert(model)
        carried, kept, consumers = carry_codes(ov_model, model, codes) if codes else ([], {}, [])
        nncf_compressed = 0
        if self.config.bits != "fp32":
            import nncf

            mode = {("int8", False): nncf.CompressWeightsMode.INT8_ASYM, ("int8", True): nncf.CompressWeightsMode.INT8_SYM,
                    ("int4", False): nncf.CompressWeightsMode.INT4_ASYM, ("int4", True): nncf.CompressWeightsMode.INT4_SYM}
            kwargs = ({"group_size": self.config.group_size, "ratio": self.config.int4_ratio}
                      if self.config.bits == "int4" else {})
            if consumers:  # the carried weights are compressed already: NNCF quantizes the others
                kwargs["ignored_scope"] = nncf.IgnoredScope(names=sorted({op.get_friendly_name() for op in consumers}))
            before = _compressed_constants(ov_model)
            ov_model = nncf.compress_weights(ov_model, mode=mode[(self.config.bits, self.config.symmetric)], **kwargs)
            nncf_compressed = _compressed_constants(ov_model) - before
        openvino.save_model(ov_model, out_dir / MODEL_XML, compress_to_fp16=False)
        tokenizer.save_pretrained(out_dir)
        genai = write_genai_tokenizers(tokenizer, out_dir)
        scheme = self.scheme(codes, carried, nncf_compressed)
        settings = {"exporter": self.name, "inference_precision": self.config.inference_precision,
                    "kv_cache_precision": self.config.cache_precision,
                    "dynamic_quantization": self.config.dynamic_quantization, "stateful": True,
                    "kv_shapes": _kv_shapes(model), "carried": carried, **scheme}
        (out_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        precisions = (f"inference precision {self.config.inference_precision}, KV cache "
                      f"{self.config.cache_precision} (stateful)")
        if carried or nncf_compressed:  # OpenVINO's dynamic quantization acts on compressed-weight MatMuls only
            precisions += ", activations of compressed MatMuls " + (
                "int8 (OpenVINO's dynamic quantization, groups of 32)" if self.config.dynamic_quantization == "auto"
                else "float (dynamic quantization off)")
        notes = f"{scheme['scheme']}; {precisions}" if scheme["weights"] != "fp32" else (
            f"fp32 weights as slimkit left them; {precisions}")
        if kept:
            notes = f"slimkit's codes not carried for {len(kept)} modules ({summarize_reasons(kept)}); " + notes
        if dequantized:
            notes = (f"{dequantized} quantized weight matrices (quanto) dequantized exactly to fp32 first; "
                     "activation quantization is not carried; " + notes)
        notes += "; " + genai
        return {"format": f"openvino-ir-{scheme['weights']}", "requantized": nncf_compressed > 0, "notes": notes,
                "openvino_genai_ready": genai.startswith(GENAI_READY),
                "dequantized_modules": dequantized, "stateful": True, "carried_tensors": len(carried),
                "requantized_tensors": nncf_compressed, "inference_precision": self.config.inference_precision,
                "kv_cache_precision": self.config.cache_precision,
                "dynamic_quantization": self.config.dynamic_quantization, **scheme}

    def scheme(self, codes: Mapping[str, Any] | None = None, carried: list[str] | None = None,
               nncf_compressed: int = 0) -> dict[str, Any]:
        """The weight format, stated fully (for the report): the carried codes' grids, then NNCF's part."""
        cfg, codes, carried = self.config, codes or {}, carried or []
        kind = "symmetric" if cfg.symmetric else "asymmetric (zero point)"
        parts, widths = [], set()
        grids: dict[str, int] = {}
        for name in carried:
            spec = codes[name]
            scales = ("one float16 scale per row" if spec.group_size == spec.codes.shape[1]
                      else f"groups of {spec.group_size}, float16 scales")
            grid = f"int{spec.bits} {'symmetric' if spec.zero_point is None else 'asymmetric'}, {scales}"
            grids[grid] = grids.get(grid, 0) + 1
            widths.add(f"int{8 if spec.bits > 4 else 4}")
        if grids:
            parts.append("slimkit's codes carried as they are (not re-quantized): " + ", ".join(
                f"{n} weight{'s' if n > 1 else ''} {grid}" for grid, n in sorted(grids.items(), key=lambda item: -item[1])))
        facts: dict[str, Any] = {}
        if cfg.bits == "int8" and (nncf_compressed or not carried):
            widths.add("int8")
            facts["symmetric"] = cfg.symmetric
            parts.append(f"NNCF int8 {kind}, per output channel, data-free round-to-nearest, "
                         + ("the other weights" if carried else "all weights"))
        elif cfg.bits == "int4" and (nncf_compressed or not carried):
            widths.add("int4")
            facts.update(symmetric=cfg.symmetric, group_size=cfg.group_size, int4_ratio=cfg.int4_ratio)
            share = ("" if cfg.int4_ratio == 1.0 else f" for {cfg.int4_ratio:.0%} of the decoder's weights (NNCF's "
                     "data-free choice of layers), the rest int8 asymmetric per channel")
            parts.append(f"NNCF int4 {kind}, groups of {cfg.group_size}, data-free round-to-nearest{share}"
                         + (" on the other weights" if carried else "") + "; an embedding and lm_head it compresses "
                         "in int8 asymmetric per channel (NNCF's backup precision)")
        elif carried:
            parts.append("every other weight fp32")
        if not parts:
            return {"weights": "fp32", "scheme": "fp32"}
        return {"weights": "+".join(sorted(widths)), **facts, "scheme": "; ".join(parts)}

    @classmethod
    def open(cls, out_dir: Path, threads: int = 1) -> OpenVinoSession:
        cls.check_dependencies()
        return OpenVinoSession(Path(out_dir), threads)


GENAI_READY = "openvino-genai ready"


def write_genai_tokenizers(tokenizer, out_dir: Path) -> str:
    """Write the tokenizer as OpenVINO models (``openvino_tokenizer.xml``/``openvino_detokenizer.xml``, with
    ``openvino_tokenizers`` when it is installed), so openvino-genai's ``LLMPipeline`` serves the folder; a
    sentence for the report's notes."""
    try:
        import openvino_tokenizers
    except ImportError:
        return ("no OpenVINO tokenizer written (pip install openvino-tokenizers, or slimkit-openvino[genai], "
                "to make the folder an openvino-genai LLMPipeline model)")
    import openvino

    try:
        encoder, decoder = openvino_tokenizers.convert_tokenizer(tokenizer, with_detokenizer=True)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types for tokenizers it cannot take
        return f"no OpenVINO tokenizer written: openvino_tokenizers could not convert it ({type(exc).__name__}: {exc})"
    openvino.save_model(encoder, out_dir / "openvino_tokenizer.xml")
    openvino.save_model(decoder, out_dir / "openvino_detokenizer.xml")
    return (f"{GENAI_READY}: openvino_genai.LLMPipeline(folder, 'CPU', ATTENTION_BACKEND='SDPA') serves the "
            "stateful IR (its default paged-attention backend does not convert this graph)")


class _WithCache(torch.nn.Module):
    """The decoder with its KV cache as plain tensors, in the input layout of OpenVINO's LLM tooling:
    ``(input_ids, attention_mask, position_ids, [k0, v0, k1, v1, ...]) -> (logits, k0', v0', ...)``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past: list[torch.Tensor]):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=self.model.config)
        # every layer keeps its whole past: a sliding-window layer (Gemma-3) is then masked to its window by the
        # model's own sliding mask, instead of cropping its cache with branches torch.export cannot keep dynamic
        cache.layers = [DynamicLayer() for _ in cache.layers]
        for i, layer in enumerate(cache.layers):
            key, value = past[2 * i], past[2 * i + 1]
            layer.lazy_initialization(key, value)      # then hold the given tensors (no empty-tensor concat)
            layer.keys, layer.values = key, value
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True)
        present = []
        for layer in cache.layers:
            present += [layer.keys, layer.values]
        return out.logits, *present


def _compressed_constants(ov_model) -> int:
    """How many weights of ``ov_model`` are stored compressed (integer constants feeding a decompression)."""
    return sum(1 for op in ov_model.get_ops() if op.get_type_name() == "Constant" and op.get_element_type()
               .get_type_name() in ("i4", "u4", "i8", "u8") and not op.get_friendly_name().endswith("zero_point")
               and len(op.get_output_shape(0)) >= 2)


def _kv_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(kv heads, head dim) of each decoder layer, read from the projections (per-layer sizes allowed)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return [(layer.self_attn.k_proj.out_features // head_dim, head_dim) for layer in model.model.layers]


#: the stateful IR's inputs, as optimum-intel writes them and openvino-genai's LLMPipeline reads them
INPUTS = ("input_ids", "attention_mask", "position_ids", "beam_idx")


def convert(model: torch.nn.Module):
    """The model as a stateful OpenVINO model (see :func:`make_stateful`) with dynamic batch and lengths."""
    import openvino
    from torch.export import Dim

    shapes = _kv_shapes(model)
    batch, seq, past = Dim("batch", min=1, max=256), Dim("seq", min=1, max=65536), Dim("past", min=0, max=65536)
    # example sizes above 1 and all different: torch.export specializes sizes 0 and 1 and may tie equal ones;
    # the mask spans past + new tokens, a relation torch.export records itself (Dim.AUTO)
    ids, past_len = torch.zeros(2, 3, dtype=torch.long), 5
    mask = torch.ones(2, past_len + 3, dtype=torch.long)
    positions = torch.arange(past_len, past_len + 3).expand(2, 3)
    cache = [torch.zeros(2, heads, past_len, dim) for heads, dim in shapes for _ in (0, 1)]
    wrapper = _WithCache(model).eval()
    try:
        with torch.no_grad():
            exported = torch.export.export(wrapper, (ids, mask, positions, cache), dynamic_shapes={
                "input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: Dim.AUTO},
                "position_ids": {0: batch, 1: seq}, "past": [{0: batch, 2: past} for _ in cache]})
        ov_model = openvino.convert_model(exported)
    except Exception as exc:  # torch.export / conversion errors have many types
        raise ArtifactError(f"could not capture {type(model).__name__} for OpenVINO: {type(exc).__name__}: {exc}") from exc
    past_names = [f"past_key_values.{i}.{part}" for i in range(len(shapes)) for part in ("key", "value")]
    for port, name in zip(ov_model.inputs, list(INPUTS[:3]) + past_names):
        port.get_tensor().set_names({name})
    present_names = [f"present.{i}.{part}" for i in range(len(shapes)) for part in ("key", "value")]
    for port, name in zip(ov_model.outputs, ["logits"] + present_names):
        port.get_tensor().set_names({name})
    make_stateful(ov_model, dict(zip(past_names, present_names)))
    return ov_model


def make_stateful(ov_model, cache_ports: dict[str, str]) -> None:
    """Hide the KV cache inside the model as OpenVINO state, the way OpenVINO's LLM tooling lays it out.

    Each ``past`` input / ``present`` output pair becomes a ReadValue/Assign variable
    (``openvino._offline_transformations.apply_make_stateful_transformation``), so the cache stays in the
    runtime between calls and the CPU plugin fuses it into its attention kernel; a ``beam_idx`` input
    ([batch] int32) selects the cache rows each call continues from (``arange(batch)`` to keep them); the
    state starts as an empty cache sized from ``input_ids``' batch (reset it with ``reset_state()``).
    """
    import numpy as np
    from openvino import PartialShape, Type, opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    batch = ov_model.input("input_ids").get_partial_shape()[0]
    beam_idx = opset13.parameter(PartialShape([batch]), Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    for name in cache_ports:
        port = ov_model.input(name)
        consumers = port.get_target_inputs()
        reordered = opset13.gather(port, beam_idx, opset13.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(reordered.output(0))
    ov_model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ov_model, cache_ports)
    # initial state: an empty cache [batch, heads, 0, head dim] with the batch of this call's input_ids
    ids_shape = opset13.shape_of(ov_model.input("input_ids"), output_type="i64")
    batch_size = opset13.gather(ids_shape, opset13.constant([0]), opset13.constant(0))
    for op in ov_model.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [opset13.constant(np.array([d.get_min_length()], np.int64)) for d in op.get_output_partial_shape(0)]
            dims[0] = batch_size
            zero = opset13.constant(0.0, dtype=op.get_output_element_type(0))
            op.set_arguments([opset13.broadcast(zero, opset13.concat(dims, axis=0))])
    ov_model.validate_nodes_and_infer_types()


class OpenVinoSession:
    """A stateful OpenVINO export compiled for the CPU, pinned to ``threads``; the KV cache lives in the
    infer request's state, reset at the start of every :meth:`logits` and :meth:`generate` call."""

    def __init__(self, folder: Path, threads: int = 1):
        import openvino

        xml = folder / MODEL_XML
        if not xml.is_file() or not (folder / SETTINGS_FILE).is_file():
            raise ArtifactError(f"{str(folder)!r} holds no {MODEL_XML} and {SETTINGS_FILE}: not an openvino export")
        settings = json.loads((folder / SETTINGS_FILE).read_text())
        self.inference_precision = settings.get("inference_precision", "f32")
        self.kv_cache_precision = settings.get("kv_cache_precision") or self.inference_precision
        self.dynamic_quantization = settings.get("dynamic_quantization", "auto")
        self.runtime_version = f"openvino {openvino.get_version()}"
        core = openvino.Core()
        model = core.read_model(str(xml))
        names = {name for port in model.inputs for name in port.get_names()}
        if not set(INPUTS) <= names:
            raise ArtifactError(f"{str(xml)!r} has inputs {sorted(names)}, not the stateful {list(INPUTS)}: it was "
                                "written by an older slimkit-openvino (KV cache as inputs); export it again")
        self._compiled = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": self.inference_precision, "KV_CACHE_PRECISION": self.kv_cache_precision,
            **({"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0} if self.dynamic_quantization == "off" else {})})
        self._request = self._compiled.create_infer_request()
        self._past = 0  # tokens held in the state

    def _infer(self, ids, reset: bool):
        """Run ``ids`` (int64 numpy [B, T]) after the cached tokens; the runtime's logits array (not copied)."""
        import numpy as np

        batch, length = ids.shape
        if reset:
            self._request.reset_state()
            self._past = 0
        positions = np.arange(self._past, self._past + length, dtype=np.int64)
        result = self._request.infer({
            "input_ids": ids, "attention_mask": np.ones((batch, self._past + length), np.int64),
            "position_ids": np.broadcast_to(positions, (batch, length)), "beam_idx": np.arange(batch, dtype=np.int32)})
        self._past += length
        return result["logits"]

    def step(self, input_ids: torch.Tensor, reset: bool = False) -> torch.Tensor:
        """Logits ``[B, T, V]`` (float32) of ``input_ids`` continuing the tokens already in the cache (the
        state), or from an empty cache if ``reset``."""
        return torch.from_numpy(self._infer(input_ids.to(torch.int64).numpy(), reset).copy()).float()

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits ``[B, T, V]`` (float32), from an empty cache."""
        return self.step(input_ids, reset=True)

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
        """Greedy decoding of exactly ``new_tokens`` tokens; the KV cache stays in the model's state."""
        import numpy as np

        tokens: list[int] = []
        logits = self._infer(input_ids.reshape(1, -1).to(torch.int64).numpy(), reset=True)
        for i in range(int(new_tokens)):
            tokens.append(int(logits[0, -1].argmax()))
            if i + 1 < new_tokens:
                logits = self._infer(np.array([[tokens[-1]]], np.int64), reset=False)
        return tokens
