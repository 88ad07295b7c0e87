"""slimkit exporter: an ExecuTorch ``.pte`` program lowered to the XNNPACK backend, with a KV cache.

Sample config (``conf`` group ``exporter``)::

    exporter: executorch
    exporter.executorch.weights: 8da4w      # auto (slimkit's weights as they are: codes carried, floats fp32), fp32, 8da8w, 8da4w
    exporter.executorch.group_size: 32      # 8da4w: int4 weights in groups of this many input channels
    exporter.executorch.embedding: int8     # the token embedding: float, int8 or int4 (per row)
    exporter.executorch.max_seq_len: 512    # KV cache length = the longest prompt + generation one call serves
    exporter.executorch.lm_head: same       # same (as the other linear layers), fp32 or 8da8w

or ``slimkit experiment=tiny exporter=executorch``.

How (the runtime's own tooling throughout): weights are quantized with torchao's ``quantize_`` —
``Int8DynamicActivationIntxWeightConfig`` (``8da4w``: int8 dynamic per-token activations, int4 symmetric
weights in groups; ``8da8w``: int8 per output channel) for every ``nn.Linear``, ``IntxWeightOnlyConfig``
per row for the embedding — the way ExecuTorch documents it for XNNPACK. The model is wrapped by
transformers' ``TorchExportableModuleForDecoderOnlyLM`` (a ``StaticCache`` held as buffers, so the cache
lives inside the program as mutable state), captured by ``torch.export`` with a dynamic sequence length,
lowered with ``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` and serialized
with ``to_executorch()``. The program has one method, ``forward(input_ids[1, T], cache_position[T]) ->
logits[1, T, V]``: prefill is one call with ``T`` prompt tokens, decode is one call per token.
:meth:`ExecuTorchExporter.open` loads it with ``executorch.runtime`` (the Python bindings of the C++
runtime), the XNNPACK thread pool pinned to ``threads``.

slimkit's integer codes are carried, not re-quantized (:mod:`slimkit_executorch.codes`): every module of an
artifact that carries codes (``quantizer=autoround``) whose grid XNNPACK holds — symmetric with positive scales:
int4 in groups, int8 per output channel, the embedding's int8/int4 rows or groups; not AutoRound's full-range int4,
whose scales can be negative — gets torchao's quantized tensor built from its own
codes and float16 scales, under any ``weights`` setting (a tied lm_head gets the table's codes as a linear
layer); the other modules get the ``weights``/``embedding``/``lm_head`` treatment, and the report says which were
carried, which were re-quantized by torchao and why.

Model families: Llama (checked on SmolLM2 and the tiny test model) and Gemma-3 (``gemma3_text``: sliding-window
and full attention layers, checked on a tiny Gemma-3 whose window is shorter than the sequence, and on
Gemma-3-270M in benchmarks/deploy_executorch.md); others are refused before any weights
load. Artifacts whose writer declares runtime-only kernels (``slimkit.deploy.holdings``: bnb, int8) are refused
(their kernels do not trace); quanto's weights are dequantized exactly first.
Structured pruning that changes the attention heads per layer is refused at export (the static cache has one
shape for all layers); MLP pruning exports as the smaller architecture.

Documented tolerance (max |Δlogit| against PyTorch on the tiny test model, whose logits are ~1 in size):
fp32 1e-4; 8da8w 0.05; 8da4w 0.3.

Export time is lowering time, and it grows with the number of decoder layers: the ops XNNPACK does not take
(RMSNorm's mean, the cache writes, the attention mask) cut each layer into ~10 delegated subgraphs, and
``to_edge_transform_and_lower`` decomposes the program and runs XNNPACK's preprocessing passes on every subgraph
with symbolic shapes (~1 s each). Measured here: ~18 s for a one-layer tiny Llama, ~40 s for four layers,
849 s for SmolLM2-135M's 30 layers at load average ~9 (``export_phase_seconds`` in the facts says which phase).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from slimkit import ArtifactError, ConfigError, DataError, check_choice
from slimkit.core.plugin import Exporter, ExporterConfig
from slimkit.deploy.holdings import int_weight_modules, refuse_runtime_kernels, summarize_reasons
from slimkit.toolkit.quantization import float_model
from slimkit_executorch.codes import carry_codes

__all__ = ["ExecuTorchConfig", "ExecuTorchExporter", "ExecuTorchSession"]

log = logging.getLogger("slimkit")

WEIGHTS = ("auto", "fp32", "8da8w", "8da4w")
EMBEDDINGS = ("float", "int8", "int4")
LM_HEADS = ("same", "fp32", "8da8w")
#: model types whose export was checked against PyTorch logits (tests and benchmarks/deploy_executorch.py)
CHECKED_MODEL_TYPES = ("llama", "gemma3_text")
PROGRAM = "model.pte"
SETTINGS_FILE = "slimkit_export.json"
INSTALL = "pip install slimkit-executorch (or: pip install executorch==1.5.1, which brings torchao)"


@dataclasses.dataclass
class ExecuTorchConfig(ExporterConfig):
    """ExecuTorch export settings."""

    #: auto/fp32 (slimkit's weights as they are: integer codes carried, floats fp32), 8da8w (int8 dynamic
    #: activations, int8 weights per output channel) or 8da4w (int8 dynamic activations, int4 symmetric weights in
    #: groups of ``group_size``); carried codes win over both
    weights: str = "auto"
    #: 8da4w: input channels per int4 group (must divide every linear layer's input width)
    group_size: int = 32
    #: the token embedding: float (as it is), int8 or int4 per row (a tied lm_head stays a separate linear layer)
    embedding: str = "float"
    #: KV cache length: the longest prompt + generation (and the longest sequence scored) one call serves
    max_seq_len: int = 512
    #: the output layer: "same" as the other linear layers, or fp32 / 8da8w whatever ``weights`` is (on a small
    #: model with a large vocabulary the int4 lm_head costs much of 8da4w's quality); a tied head whose table
    #: carries codes XNNPACK holds takes the table's codes instead
    lm_head: str = "same"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("exporter.executorch.weights", self.weights, WEIGHTS)
        check_choice("exporter.executorch.embedding", self.embedding, EMBEDDINGS)
        check_choice("exporter.executorch.lm_head", self.lm_head, LM_HEADS)
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 2 \
                or self.group_size % 2:
            raise ConfigError("exporter.executorch.group_size", self.group_size, "an even number >= 2 (e.g. 32, 64)")
        if not isinstance(self.max_seq_len, int) or isinstance(self.max_seq_len, bool) \
                or not 8 <= self.max_seq_len <= 32768:
            raise ConfigError("exporter.executorch.max_seq_len", self.max_seq_len, "an integer in [8, 32768]")

    @property
    def bits(self) -> str:
        return "fp32" if self.weights == "auto" else self.weights

    @property
    def head_bits(self) -> str:
        return self.bits if self.lm_head == "same" else self.lm_head

    @property
    def quantized(self) -> bool:
        return self.bits != "fp32" or self.embedding != "float"


class ExecuTorchExporter(Exporter):
    """torch.export (static KV cache) → XNNPACK-lowered ``.pte``; served with ExecuTorch's runtime on the CPU."""

    name = "executorch"
    runtime = "executorch"
    Config = ExecuTorchConfig
    requires = {"executorch.runtime": INSTALL, "torchao": "pip install torchao (executorch 1.5.1 brings 0.18)"}
    config: ExecuTorchConfig

    def check_model(self, model_config, writer: str | None) -> None:
        model_type = getattr(model_config, "model_type", None)
        if model_type not in CHECKED_MODEL_TYPES:
            raise ConfigError("exporter", "executorch", "a model of type " + ", ".join(CHECKED_MODEL_TYPES),
                              f"model type {model_type!r}: its ExecuTorch export has not been checked against PyTorch "
                              "logits by this exporter; try exporter=onnx or exporter=gguf")
        refuse_runtime_kernels(  # asked of the writer: slimkit.deploy.holdings
            "executorch", writer, "do not trace into ExecuTorch ops",
            "drop the quantizer (~quantizer) and let torchao quantize for XNNPACK "
            "(exporter.executorch.weights=8da8w or 8da4w), or exporter=gguf")
        if self.config.bits == "8da4w":
            for key in ("hidden_size", "intermediate_size"):
                size = getattr(model_config, key, None)
                if isinstance(size, int) and size % self.config.group_size:
                    raise ConfigError("exporter.executorch.group_size", self.config.group_size,
                                      f"an even number dividing {key}={size} (e.g. 32)",
                                      "int4 groups must tile each linear layer's input channels")

    def export(self, artifact_dir: Path, model, tokenizer, out_dir: Path) -> dict[str, Any]:
        from tqdm.auto import tqdm

        self.check_model(model.config, None)
        out_dir = Path(out_dir)
        model, dequantized = float_model(model)
        _check_uniform_attention(model)
        if (self.config.quantized or int_weight_modules(model)) and not dequantized:
            model = copy.deepcopy(model)  # never quantize the caller's model
        codes = int_weight_modules(model)
        seconds: dict[str, float] = {}
        steps = tqdm(total=5, desc="executorch export", leave=False)

        def step(name: str, fn, *args):
            steps.set_postfix_str(name)
            start = time.perf_counter()
            result = fn(*args)
            seconds[name] = round(time.perf_counter() - start, 2)
            steps.update()
            return result

        with _export_ready(model):
            carried, kept, requantized = step("quantize", self._quantize, model, codes)
            exported = step("torch.export", capture, model, self.config.max_seq_len)
            edge = step("to_edge_transform_and_lower", lower, exported)
            program = step("to_executorch", serialize, edge)
        step("write", lambda: ((out_dir / PROGRAM).write_bytes(program.buffer), tokenizer.save_pretrained(out_dir)))
        head = model.get_output_embeddings()
        scheme = self.scheme(carried, requantized, next((n for n, m in model.named_modules() if m is head), None))
        settings = {"exporter": self.name, "max_seq_len": self.config.max_seq_len,
                    "vocab_size": int(model.config.vocab_size), "carried": sorted(carried), **scheme}
        (out_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        steps.close()
        notes = scheme["scheme"] + f"; static KV cache of {self.config.max_seq_len} positions"
        if kept:
            notes = f"slimkit's codes not carried for {len(kept)} modules ({summarize_reasons(kept)}); " + notes
        if dequantized:
            notes = (f"{dequantized} quantized weight matrices (quanto) dequantized exactly to fp32 first; "
                     "activation quantization is not carried; " + notes)
        return {"format": f"executorch-pte-xnnpack-{scheme['weights']}" +
                          ("" if scheme["embedding"] == "float" else f"-emb{scheme['embedding']}"),
                "requantized": bool(requantized), "requantized_tensors": len(requantized),
                "carried_tensors": len(carried), "carried": sorted(carried), "notes": notes,
                "dequantized_modules": dequantized, "max_seq_len": self.config.max_seq_len,
                "export_phase_seconds": seconds, **scheme}

    def _quantize(self, model: torch.nn.Module, codes=None) -> tuple[dict[str, tuple[str, str]], dict[str, str],
                                                                dict[str, str]]:
        """In place: slimkit's codes carried first (:func:`~slimkit_executorch.codes.carry_codes`), then torchao's
        ``quantize_`` on what the settings quantize and no codes cover — the embedding (per row), then every
        ``nn.Linear``. Returns ({carried module: (short, description)}, {kept module: why}, {re-quantized module:
        its scheme})."""
        from torchao.quantization.granularity import PerAxis, PerGroup
        from torchao.quantization.quant_api import (Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig,
                                                    quantize_)

        cfg = self.config
        carried, kept = carry_codes(model, codes) if codes else ({}, {})
        names = {module: name for name, module in model.named_modules()}
        done = {module for module, name in names.items() if name in carried}
        embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
        requantized: dict[str, str] = {}

        def quantize(config, scheme: str, wanted) -> None:
            chosen = {module for module in names if module not in done and wanted(module)}
            requantized.update({names[module]: scheme for module in chosen})
            if chosen:
                quantize_(model, config, lambda module, _name: module in chosen)

        if cfg.embedding != "float":
            dtype = torch.int8 if cfg.embedding == "int8" else torch.int4
            quantize(IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerAxis(0)), cfg.embedding,
                     lambda module: module is embedding)
        schemes = {"8da8w": Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                                  weight_granularity=PerAxis(0)),
                   "8da4w": Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                                  weight_granularity=PerGroup(cfg.group_size))}
        if cfg.bits in schemes:
            quantize(schemes[cfg.bits], cfg.bits,
                     lambda module: isinstance(module, torch.nn.Linear) and module is not head)
        if cfg.head_bits in schemes:
            quantize(schemes[cfg.head_bits], cfg.head_bits, lambda module: module is head)
        return carried, kept, requantized

    def scheme(self, carried: dict[str, tuple[str, str]], requantized: dict[str, str],
               head_name: str | None) -> dict[str, Any]:
        """The weight format, stated fully (for the report), from what :meth:`_quantize` did: the codes carried,
        then what torchao quantized, then what stays float."""
        cfg = self.config
        torchao = {"8da8w": "torchao 8da8w: int8 dynamic per-token activations, int8 symmetric weights per output "
                            "channel",
                   "8da4w": f"torchao 8da4w: int8 dynamic per-token activations, int4 symmetric weights in groups "
                            f"of {cfg.group_size}",
                   "int8": "torchao int8 per-row embedding", "int4": "torchao int4 per-row embedding"}
        parts = []
        if carried:
            counts: dict[str, int] = {}
            for _, description in carried.values():
                counts[description] = counts.get(description, 0) + 1
            parts.append("slimkit's codes carried as they are (not re-quantized): " + ", ".join(
                f"{n}x {description}" for description, n in sorted(counts.items(), key=lambda item: -item[1])))
        for scheme in dict.fromkeys(requantized.values()):  # in order, once each
            parts.append(torchao[scheme] + (" (re-quantized from the float weights)" if carried else ""))
        if not requantized and not carried:
            parts.append("fp32 weights")
        head_carried = head_name is not None and head_name in carried
        if carried and not set(requantized.values()) & {"8da4w", "8da8w"}:
            parts.append("every other weight fp32")
        table_carried = any(not short.startswith("8da") for short, _ in carried.values())
        if not table_carried and cfg.embedding not in requantized.values():
            parts.append("float embedding")
        parts.append("lm_head stored separately " + ("with the tied table's codes" if head_carried else
                     f"as a {cfg.head_bits} linear layer") + " (a tied weight is written twice)")
        linear = sorted({short for short, _ in carried.values() if short.startswith("8da")}
                        | {s for s in requantized.values() if s.startswith("8da")})
        embedding = next((short for short, _ in carried.values() if not short.startswith("8da")),
                         cfg.embedding if cfg.embedding in requantized.values() else "float")
        out: dict[str, Any] = {"weights": "+".join(linear) or "fp32", "embedding": embedding,
                               "scheme": "; ".join(parts)}
        if "8da4w" in requantized.values():
            out["group_size"] = cfg.group_size
        return out

    @classmethod
    def open(cls, out_dir: Path, threads: int = 1) -> "ExecuTorchSession":
        cls.check_dependencies()
        return ExecuTorchSession(Path(out_dir), threads)


def _check_uniform_attention(model: torch.nn.Module) -> None:
    """The static cache has one (kv heads, head dim) for every layer: refuse per-layer head pruning."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    expected = config.num_key_value_heads * head_dim
    widths = {layer.self_attn.k_proj.out_features for layer in model.model.layers}
    if widths != {expected}:
        raise ArtifactError(f"exporter=executorch: the model's layers have key/value widths {sorted(widths)} "
                            f"(per-layer attention-head pruning) but ExecuTorch's static KV cache holds one shape "
                            f"({expected}) for all layers; prune MLP channels only (pruner.include=['*.mlp.*']) or "
                            "use exporter=openvino")


class _export_ready:
    """Settings the export needs, restored afterwards: a static cache in the generation config, and no
    embedding ``padding_idx`` (it only affects gradients; without it the quantized-embedding pattern fuses)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        embed = self.model.get_input_embeddings()
        gen = self.model.generation_config
        self.saved = (embed.padding_idx, gen.cache_implementation, self.model.config.use_cache)
        embed.padding_idx = None
        gen.cache_implementation = "static"
        self.model.config.use_cache = True
        return self.model

    def __exit__(self, *exc):
        embed = self.model.get_input_embeddings()
        embed.padding_idx, self.model.generation_config.cache_implementation, self.model.config.use_cache = self.saved
        return False


def capture(model: torch.nn.Module, max_seq_len: int):
    """``torch.export`` of transformers' static-cache wrapper: ``(input_ids[1, T], cache_position[T]) -> logits``,
    ``T`` dynamic up to ``max_seq_len``."""
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    wrapper = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_seq_len)
    seq = torch.export.Dim("seq", min=1, max=max_seq_len)
    example = 5  # > 1: torch.export specializes sizes 0 and 1
    try:
        with torch.no_grad():
            # strict (dynamo) capture: the non-strict trace of the static cache fails later in run_decompositions
            return wrapper.export(input_ids=torch.zeros(1, example, dtype=torch.long),
                                  cache_position=torch.arange(example),
                                  dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}}, strict=True)
    except Exception as exc:  # torch.export errors have many types
        raise ArtifactError(f"could not capture {type(model).__name__} for ExecuTorch: "
                            f"{type(exc).__name__}: {exc}") from exc


def lower(exported):
    """``to_edge_transform_and_lower`` with the XNNPACK partitioner: the edge program with its delegates."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    try:
        return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()],
                                           compile_config=EdgeCompileConfig(_check_ir_validity=False,
                                                                            _skip_dim_order=True))
    except Exception as exc:
        raise ArtifactError(f"could not lower the program to ExecuTorch/XNNPACK: {type(exc).__name__}: {exc}") from exc


def serialize(edge):
    """``to_executorch``: memory planning, quantized-op fusion and serialization (``.buffer`` = the ``.pte`` bytes)."""
    import executorch.kernels.quantized  # noqa: F401  (out variants of the quantized embedding ops)
    from executorch.exir import ExecutorchBackendConfig

    try:
        return edge.to_executorch(config=ExecutorchBackendConfig(extract_delegate_segments=True,
                                                                 do_quant_fusion_and_const_prop=True))
    except Exception as exc:
        raise ArtifactError(f"could not serialize the ExecuTorch program: {type(exc).__name__}: {exc}") from exc


class ExecuTorchSession:
    """A ``.pte`` loaded in ExecuTorch's runtime, the XNNPACK thread pool pinned to ``threads``.

    The KV cache lives in the program; a call at ``cache_position`` 0 starts a new sequence (positions after the
    last one written are masked, so earlier sequences leave nothing behind)."""

    runtime = "executorch"

    def __init__(self, folder: Path, threads: int = 1):
        import executorch
        import executorch.kernels.quantized  # noqa: F401  (registers the quantized embedding kernels in the runtime)
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        program_file, settings_file = folder / PROGRAM, folder / SETTINGS_FILE
        if not program_file.is_file() or not settings_file.is_file():
            raise ArtifactError(f"{str(folder)!r} holds no {PROGRAM} and {SETTINGS_FILE}: not an executorch export")
        settings = json.loads(settings_file.read_text())
        self.max_seq_len = int(settings["max_seq_len"])
        portable_lib._unsafe_reset_threadpool(int(threads))
        self.runtime_version = f"executorch {getattr(executorch, '__version__', None) or _version()}"
        self._method = Runtime.get().load_program(program_file).load_method("forward")

    def _run(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Logits ``[1, T, V]`` of ``ids [1, T]`` written at cache positions ``start..start+T-1`` (a copy: the
        runtime reuses its output buffer)."""
        positions = torch.arange(start, start + ids.shape[1], dtype=torch.long)
        return self._method.execute([ids.to(torch.long).contiguous(), positions])[0].clone()

    def _check_length(self, length: int) -> None:
        if length > self.max_seq_len:
            raise DataError(f"a sequence of {length} tokens does not fit the export's KV cache of "
                            f"{self.max_seq_len} positions; export with exporter.executorch.max_seq_len>={length}")

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits ``[B, T, V]`` (float32), one row at a time from cache position 0."""
        self._check_length(input_ids.shape[1])
        return torch.cat([self._run(row.unsqueeze(0), 0) for row in input_ids]).float()

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
        """Greedy decoding of exactly ``new_tokens`` tokens: one prefill call, then one call per token."""
        ids = input_ids.reshape(1, -1)
        length = ids.shape[1]
        self._check_length(length + int(new_tokens) - 1)
        logits = self._run(ids, 0)
        tokens: list[int] = []
        for i in range(int(new_tokens)):
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            if i + 1 < new_tokens:
                logits = self._run(torch.tensor([[token]]), length + i)
        return tokens


def _version() -> str:
    from importlib.metadata import version

    return version("executorch")
