"""slimkit exporter ``gguf``: llama.cpp's file format, the on-device standard, through the ``gguf`` package.

::

    slimkit experiment=tiny exporter=gguf                       # fp32 weights carried through (F32)
    slimkit '~quantizer' exporter=gguf exporter.gguf.weights=q4_0

    # conf/exporter/<preset>.yaml
    # @package exporter.gguf
    backend: gguf
    weights: q8_0        # auto | f32 | f16 | bf16 | q8_0 | q5_1 | q5_0 | q4_1 | q4_0
    embeddings: auto     # the output / tied embedding matrix: auto (Q8_0 under 4/5-bit formats) or a format

Model families: Llama (``LlamaForCausalLM``: SmolLM2, the tiny test model; checked in llama.cpp),
Gemma-3 (``gemma3_text``: Gemma-3-270M; ``1 + w`` RMSNorm weights stored as llama.cpp expects, sliding-window
layers listed per layer with their own rope base, the embedding scale and query scale in llama.cpp's graph;
checked in llama.cpp and with transformers' GGUF loader), Qwen2 and Qwen3 (same family table; checked only by
reading tiny models back with transformers' GGUF loader). Tokenizers: byte-level BPE (GPT-2/Llama-3/SmolLM
style, llama.cpp's "gpt2" model) and SentencePiece-style BPE with byte fallback (Gemma, llama.cpp's "llama"
model). Rope scaling (Llama 3.1's "llama3"), Phi, Mistral and the rest are refused (a ConfigError before any
weights load for the model type); llama.cpp's ``convert_hf_to_gguf.py`` covers them. A structurally pruned model (uniform per layer) is written as
its smaller architecture.

Weights: "auto" writes the model's own float weights (fp32 → F32, no loss); the block formats are
quantized by gguf-py's reference implementation, the same arithmetic as llama.cpp's quantizer for
these types. **slimkit's integer codes are written as they are**: a module that carries symmetric codes
(``quantizer=autoround``: ``slimkit_int_weights``) in groups of a multiple of 32 becomes Q4_0 (4-bit and
fewer), Q5_0 or Q8_0 blocks whose ``d`` is the group's float16 scale and ``q`` the code plus the format's
offset (``slimkit_gguf.codes``) — under "auto" the smallest of these that holds them, under an explicit
format that format when it holds them. Codes a format cannot hold (asymmetric, groups of 16/24, 8-bit codes
under Q4_0) are written as their exact float values under "auto", or dequantized and re-quantized by gguf-py
under a block format; the report's ``requantized``, ``carried_tensors``, ``requantized_tensors`` and
``notes`` say which and why. optimum-quanto's quantized weights (``quantizer=quanto``) dequantize
exactly: "auto" writes them as F32 (quanto's values, not its size), a block format re-quantizes them.
What the artifact holds is asked of the stage that wrote it (``Stage.artifact_weights``, see
``slimkit.deploy.holdings``): packed weights or kernels only their own backend runs (bnb NF4/FP4/LLM.int8,
the int8 quantizer's W8A8) are refused at config time, naming the alternatives.

Documented tolerance (max |Δlogit| against PyTorch on the tiny test model, whose logits are ~1 in
size): f32 1e-3 (bit-exact through transformers' loader; llama.cpp's kernels sum in another
order), f16/bf16 1e-2, q8_0 5e-2, q5_*/q4_* 0.3; and, for every format, the file's logits equal
PyTorch's on the same weights dequantized by gguf-py within 1e-4 (transformers' loader) or, in
llama.cpp, within 2e-2 (Q8_0) / 5e-2 (Q4_0), which also quantizes activations to 8 bits in its dot products.
Carried integer codes: the file's dequantized weights equal the artifact's bit for bit (gguf-py's ``dequantize``),
so its logits equal the quantized PyTorch model's within 1e-4 through transformers' loader and 5e-2 in llama.cpp
(tests/test_gguf_codes.py).

Runtime: llama.cpp through ``llama-cpp-python`` when importable (``pip install llama-cpp-python``
builds it from source: ``apt-get install build-essential cmake`` first, ~15 min on 2 cores); otherwise
transformers' GGUF loader, which dequantizes to fp32 and runs in PyTorch — exact for quality, but its
speed is PyTorch's. The report's ``runtime`` says which one ran.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import torch
from slimkit.core.errors import ArtifactError, ConfigError
from slimkit.core.plugin import Exporter, ExporterConfig, check_choice
from slimkit.deploy.holdings import refuse_runtime_kernels
from slimkit_gguf.runtime import LlamaCppSession, TransformersGGUFSession, llama_cpp_available
from slimkit_gguf.writer import FAMILIES, WEIGHT_TYPES, quantized_modules, unsupported_rope, write_gguf

__all__ = ["GGUFConfig", "GGUFExporter", "FILE_NAME"]

FILE_NAME = "model.gguf"
WEIGHTS = ("auto", *WEIGHT_TYPES)

@dataclasses.dataclass
class GGUFConfig(ExporterConfig):
    """What the GGUF file holds and what evaluates it."""

    #: weight matrices: auto (the model's own float dtype, no loss), f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0
    weights: str = "auto"
    #: the output / tied embedding matrix: auto (Q8_0 under 4/5-bit formats, as llama.cpp's quantizer) or a format
    embeddings: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("exporter.gguf.weights", self.weights, WEIGHTS)
        check_choice("exporter.gguf.embeddings", self.embeddings, WEIGHTS)


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


class GGUFExporter(Exporter):
    """A single ``model.gguf`` (weights, hyperparameters and tokenizer) for llama.cpp; see the module docstring."""

    name = "gguf"
    Config = GGUFConfig
    runtime = "llama.cpp"
    requires = {"gguf": "pip install gguf"}
    config: GGUFConfig

    def check_model(self, model_config: Any, writer: Optional[str]) -> None:
        refuse_runtime_kernels(
            "gguf", writer, "GGUF cannot hold",
            "quantizer=autoround (its symmetric int4/int8 codes are written into Q4_0/Q8_0 as they are), drop the "
            "quantizer (~quantizer) and let GGUF quantize (exporter.gguf.weights=q8_0 or q4_0), or deploy that "
            "artifact with a runtime that takes it (exporter=openvino or exporter=onnx)")
        if writer == "torch_pruning":
            raise ConfigError("exporter", "gguf", "a structurally pruned model with the same sizes in every layer",
                              "the torch_pruning artifact has per-layer sizes (some layers were left whole), which this "
                              "exporter does not write; prune every layer alike")
        if model_config is not None and getattr(model_config, "model_type", None) not in FAMILIES:
            raise ConfigError("exporter", "gguf", f"a model of type {', '.join(sorted(FAMILIES))}",
                              f"model type {getattr(model_config, 'model_type', None)!r} is not mapped to GGUF by this "
                              "exporter; llama.cpp's convert_hf_to_gguf.py converts many more families, or use "
                              "exporter=onnx / exporter=openvino")
        rope = unsupported_rope(model_config) if model_config is not None else None
        if rope is not None:
            raise ConfigError("exporter", "gguf", "a model with plain rope",
                              f"rope scaling {rope!r} is not mapped to GGUF by this exporter; "
                              "llama.cpp's convert_hf_to_gguf.py converts it")
        family = FAMILIES.get(getattr(model_config, "model_type", None))
        why = family.unsupported(model_config) if family is not None and family.unsupported else None
        if why:
            raise ConfigError("exporter", "gguf", f"a {model_config.model_type} model llama.cpp's graph runs",
                              f"this one has {why}; use exporter=onnx or exporter=openvino")

    def resolved_weights(self, model: torch.nn.Module) -> str:
        """``auto`` -> the model's own float dtype."""
        if self.config.weights != "auto":
            return self.config.weights
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        return {torch.float16: "f16", torch.bfloat16: "bf16"}.get(dtype, "f32")

    def export(self, artifact_dir: Path, model: torch.nn.Module, tokenizer: Any, out_dir: Path) -> dict[str, Any]:
        self.check_model(model.config, None)
        quantized = quantized_modules(model)
        weights = self.resolved_weights(model)
        facts = write_gguf(model, tokenizer, out_dir / FILE_NAME, weights, self.config.embeddings,
                           carry_codes=self.config.weights == "auto")
        carried, not_carried = facts.pop("carried"), facts.pop("not_carried")
        requantized, types = facts.pop("requantized_tensors"), facts.pop("tensor_types_by_name")
        notes = []
        if carried:
            kinds = ", ".join(f"{n} {t}" for t, n in sorted(_count(carried.values()).items()))
            notes.append(f"{len(carried)} weight matrices written from slimkit's integer codes and float16 scales as "
                         f"they are ({kinds}), not re-quantized")
        for kind, n in sorted(_count(not_carried.values()).items()):
            qtype, why = kind.split(": ", 1)
            how = (f"written as their exact dequantized values as {qtype}" if qtype == "F32" else
                   f"dequantized and converted to {qtype}" if qtype in ("F16", "BF16") else
                   f"dequantized and re-quantized by gguf-py to {qtype}")
            notes.append(f"{n} matrices with integer codes {how}: the format cannot hold {why} as they are")
        if quantized:  # e.g. quanto: its integer codes times scales, dequantized exactly, then written as `weights`
            kind = sorted(set(quantized.values()))
            notes.append(f"{len(quantized)} quantized weight matrices ({', '.join(kind)}) dequantized exactly and "
                         f"written as {weights.upper()}" + ("" if self.config.weights == "auto" else
                                                            " (re-quantized by gguf-py)") +
                         "; activation quantization, if any, is not carried (llama.cpp runs its own)")
        floats = [n for n in requantized if n not in not_carried]
        if floats and not quantized:
            notes.append(f"{len(floats)} float weight matrices quantized by gguf-py (llama.cpp's block formats: "
                         f"{', '.join(sorted({types[n] for n in floats}))})")
        if not notes or not (carried or requantized or quantized):
            notes.append("slimkit's float weights written as they are")
        main = facts.pop("main_type")
        return {"format": f"gguf {main}", "requantized": bool(requantized), "file": FILE_NAME,
                "notes": "; ".join(notes), "dequantized_modules": len(quantized), "carried_tensors": len(carried),
                "requantized_tensors": len(requantized), **facts}

    @classmethod
    def open(cls, out_dir: Path, threads: int = 1) -> Any:
        """llama.cpp (llama-cpp-python) if importable, else transformers' GGUF loader; ``.runtime`` says which."""
        path = Path(out_dir) / FILE_NAME
        if not path.is_file():
            raise ArtifactError(f"{str(out_dir)!r} holds no {FILE_NAME}: not a gguf export")
        if llama_cpp_available():
            return LlamaCppSession(path, threads)
        return TransformersGGUFSession(path, threads)
