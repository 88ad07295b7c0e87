"""slimkit exporter: ONNX for ONNX Runtime, through onnxruntime-genai's model builder.

Sample config (``conf`` group ``exporter``)::

    exporter: onnx
    exporter.onnx.weights: int4        # auto (slimkit's weights as they are: fp32, or int4 codes), fp32, int8, int4
    exporter.onnx.block_size: 32       # int8/int4: weights quantized in blocks of this many input channels
    exporter.onnx.symmetric: true      # int8/int4: symmetric blocks (no zero point)
    exporter.onnx.context_length: null # longest prompt + generation served (null: the model's own); sizes the RoPE tables

or ``slimkit experiment=tiny exporter=onnx exporter.onnx.weights=int4``.

The export is the builder's folder: ``model.onnx`` (+ ``model.onnx.data``) with ``GroupQueryAttention``
and a KV cache, int8/int4 weights as ``MatMulNBits`` (round-to-nearest per block, scales in fp32; on the
CPU the builder's default ``accuracy_level=4`` computes those matmuls with int8 activations), the
tokenizer and ``genai_config.json``. :meth:`OnnxExporter.open` serves it: plain onnxruntime for
full-sequence logits (an empty cache), onnxruntime-genai for greedy generation with the KV cache, both
pinned to ``intra_op_num_threads``.

Model families: what the builder converts (``BUILDER_ARCHITECTURES``; checked here on Llama: SmolLM2 and the
tiny test model, and Gemma-3: a tiny sliding-window model and Gemma-3-270M). The builder runs through
:mod:`slimkit_onnx.build`, which hands it Gemma-3's per-attention-type RoPE (transformers 5) in the flat form it
reads; other per-type RoPE settings are refused before any stage. A structurally pruned model with the same
sizes in every layer exports as its smaller architecture; per-layer sizes and artifacts of weights only their own backend runs (bnb, the int8 quantizer's
W8A8; asked of the writer, ``slimkit.deploy.holdings``) are refused before any weights load, naming the
alternatives; quanto's weights are dequantized exactly to fp32 first.

slimkit's int4 codes are carried, not re-quantized (``slimkit_onnx.codes``): for an artifact whose modules carry
symmetric 4-bit codes (``quantizer=autoround``), ``weights=auto`` exports int4 MatMulNBits in blocks of the codes'
group size (the largest of 16-256 dividing every group), and the builder's quantized weights and scales are then
replaced by the codes (``q = code + 8``) and their float16 scales, which MatMulNBits dequantizes exactly; under
``weights=int4`` the same happens wherever the groups are whole blocks. What cannot be carried (other widths,
asymmetric codes, groups smaller than a block, float modules) keeps the builder's quantization, and the report's
``requantized``, ``carried_tensors`` and ``notes`` say which and why.

Documented tolerance (max |Δlogit| against PyTorch on the tiny test model, whose logits are ~1 in size):
fp32 1e-4; int8 0.05; int4 0.3. With ``accuracy_level=0`` the quantized logits equal PyTorch's on weights
rounded to the stated scheme within 1e-4 (tests/test_onnx.py), so the scheme in the report is what the file holds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from slimkit import ArtifactError, ConfigError, check_choice
from slimkit.core.plugin import Exporter, ExporterConfig
from slimkit.deploy.holdings import int_weight_modules, refuse_runtime_kernels, summarize_reasons
from slimkit.toolkit.quantization import float_model
from slimkit_onnx.build import flat_rope, per_attention_type
from slimkit_onnx.codes import carry_codes

__all__ = ["OnnxConfig", "OnnxExporter", "OnnxSession"]

WEIGHTS = ("auto", "fp32", "int8", "int4")
BLOCK_SIZES = (16, 32, 64, 128, 256)
#: the causal-LM architectures onnxruntime-genai 0.18's model builder converts (its ``create_model``)
BUILDER_ARCHITECTURES = (
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "GraniteForCausalLM",
    "OlmoForCausalLM", "NemotronForCausalLM", "SmolLM3ForCausalLM", "InternLM2ForCausalLM", "Ernie4_5ForCausalLM")
BUILDER_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                       "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                       "gemma3_text": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM", "granite": "GraniteForCausalLM"}
#: config key the structured pruner records when layer sizes differ (a stock config cannot describe them)
NON_UNIFORM_KEY = "slimkit_layer_dims"
NON_UNIFORM_WHY = ("a torch_pruning model with layers left whole has per-layer sizes; the model builder reads a stock "
                   "config, which holds one size for all layers. Prune every layer alike, or use exporter=openvino, "
                   "which exports the model in memory with its per-layer sizes")
#: what the runtime files are called in the export folder
MODEL_FILE = "model.onnx"
SETTINGS_FILE = "slimkit_export.json"


@dataclasses.dataclass
class OnnxConfig(ExporterConfig):
    """ONNX Runtime export settings."""

    #: weight format: auto/fp32 (slimkit's float weights as they are), int8 or int4 (MatMulNBits, quantized by
    #: the builder's round-to-nearest; the tied embedding/lm_head matrix is quantized too)
    weights: str = "auto"
    #: int8/int4: block size along the input channels (the builder's default is 32)
    block_size: int = 32
    #: int8/int4: symmetric blocks (signed codes, no zero point); false stores a zero point per block (and keeps the
    #: input embedding fp32: the builder cannot share an asymmetric embedding with the lm_head)
    symmetric: bool = True
    #: int8/int4: MatMulNBits compute: 4 = int8 activations (the builder's CPU default, fastest), 0 = as the inputs
    #: (fp32), 1-3 = fp32/fp16/bf16
    accuracy_level: int = 4
    #: the longest sequence (prompt + generation) the export serves; null = the model's ``max_position_embeddings``.
    #: The builder writes RoPE cos/sin tables for this many positions into the file (Gemma-3-270M at its 32,768:
    #: 67 MB), so a shorter context is a smaller file
    context_length: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context_length is not None and (not isinstance(self.context_length, int)
                                                or isinstance(self.context_length, bool) or self.context_length < 16):
            raise ConfigError("exporter.onnx.context_length", self.context_length, "null (the model's "
                              "max_position_embeddings) or an integer >= 16")
        check_choice("exporter.onnx.weights", self.weights, WEIGHTS)
        check_choice("exporter.onnx.block_size", self.block_size, BLOCK_SIZES)
        if not isinstance(self.symmetric, bool):
            raise ConfigError("exporter.onnx.symmetric", self.symmetric, "true or false")
        check_choice("exporter.onnx.accuracy_level", self.accuracy_level, range(5))

    @property
    def precision(self) -> str:
        """The builder's ``-p`` value."""
        return "fp32" if self.weights == "auto" else self.weights


def sliding_window(model_config) -> bool:
    """Whether some attention layers of the model see only a window of the past (Gemma-2/3, Mistral)."""
    window = getattr(model_config, "sliding_window", None)
    types = getattr(model_config, "layer_types", None)
    return bool(window) and (types is None or "sliding_attention" in types)


def shares_embedding(cfg: OnnxConfig) -> bool:
    """Whether the builder (0.18) quantizes the tied embedding together with the lm_head: for symmetric int4 only
    (int8 leaves the embedding's Gather in fp32; asymmetric sharing is invalid, so it is switched off)."""
    return cfg.precision == "int4" and cfg.symmetric


class OnnxExporter(Exporter):
    """Export through ``onnxruntime_genai.models.builder``; serve with onnxruntime(-genai)."""

    name = "onnx"
    runtime = "onnxruntime"
    Config = OnnxConfig
    requires = {
        "onnxruntime": "pip install slimkit-onnx (or: pip install onnxruntime-genai==0.18.0 onnx_ir)",
        "onnxruntime_genai": "pip install onnxruntime-genai==0.18.0",
        "onnx_ir": "pip install onnx_ir (the model builder needs it and does not install it)",
    }
    config: OnnxConfig

    def check_before_load(self, settings: Mapping[str, Any]) -> None:
        context = self.config.context_length
        if context is not None:
            data, evaluation = settings.get("data") or {}, settings.get("eval") or {}
            longest = max(int(data.get("seq_len") or 0),
                          int(evaluation.get("prompt_tokens") or 0) + int(evaluation.get("decode_tokens") or 0))
            if context < longest:
                raise ConfigError("exporter.onnx.context_length", context, f"at least {longest}",
                                  "the export is evaluated on windows of data.seq_len tokens and timed on "
                                  "eval.prompt_tokens + eval.decode_tokens")
        pruner = settings.get("pruner") or {}
        per_layer = [p for p in pruner.get("exclude") or [] if re.search(r"layers\.\d", str(p))]
        if pruner.get("backend") == "torch_pruning" and per_layer:  # some layers left whole: per-layer sizes
            raise ConfigError("pruner.exclude", per_layer, "no per-layer exclusions with exporter=onnx", NON_UNIFORM_WHY)

    def check_model(self, model_config, writer: str | None) -> None:
        model_type = getattr(model_config, "model_type", None)
        # a config built in memory has no `architectures` (save_pretrained fills it in): then the model type decides
        architecture = (getattr(model_config, "architectures", None) or [BUILDER_MODEL_TYPES.get(model_type, "")])[0]
        if architecture not in BUILDER_ARCHITECTURES:
            raise ConfigError("exporter", "onnx", "a model onnxruntime-genai's builder converts: "
                              + ", ".join(BUILDER_ARCHITECTURES),
                              f"{architecture or type(model_config).__name__} (model_type={model_type!r}) is not one; "
                              "try exporter=openvino")
        positions = getattr(model_config, "max_position_embeddings", None)
        if self.config.context_length is not None and positions and self.config.context_length > positions:
            raise ConfigError("exporter.onnx.context_length", self.config.context_length,
                              f"null or at most {positions}", f"{model_type!r} has max_position_embeddings={positions}")
        if getattr(model_config, NON_UNIFORM_KEY, None):
            raise ConfigError("exporter", "onnx", "a model with the same sizes in every layer", NON_UNIFORM_WHY)
        rope = getattr(model_config, "rope_parameters", None)
        if per_attention_type(rope) and flat_rope(rope) is None:
            # transformers 5 nests RoPE per attention type for e.g. Gemma-3; slimkit_onnx.build hands the builder
            # the flat form it reads, which can say only default RoPE with one base per attention type
            raise ConfigError("exporter", "onnx", "a model whose config has one RoPE setting, or default RoPE per "
                              "attention type (full_attention/sliding_attention with rope_type='default' and a "
                              "rope_theta each, e.g. Gemma-3-270M)",
                              f"{model_type!r} sets rope_parameters={dict(rope)!r}, which onnxruntime-genai's model "
                              "builder cannot read; use exporter=gguf or exporter=openvino")
        refuse_runtime_kernels(
            "onnx", writer, "the ONNX Runtime builder cannot read",
            "quantizer=autoround (its symmetric int4 codes are written into MatMulNBits as they are), drop the "
            "quantizer (~quantizer) and let the builder quantize (exporter.onnx.weights=int8 or int4, MatMulNBits), "
            "or exporter=gguf")

    def export(self, artifact_dir: Path, model, tokenizer, out_dir: Path) -> dict[str, Any]:
        self.check_model(model.config, None)
        out_dir = Path(out_dir)
        codes = int_weight_modules(model)
        cfg = self.carrying_config(codes)
        model, dequantized = float_model(model)
        with tempfile.TemporaryDirectory(prefix="slimkit-onnx-") as tmp:
            source, cache = Path(tmp) / "hf", Path(tmp) / "cache"
            model.save_pretrained(source, safe_serialization=True)
            tokenizer.save_pretrained(source)
            command = [sys.executable, "-m", "slimkit_onnx.build", "-i", str(source), "-o", str(out_dir),
                       "-p", cfg.precision, "-e", "cpu", "-c", str(cache)]
            if cfg.context_length is not None:
                command += ["--context_length", str(cfg.context_length)]
            extra = []
            if cfg.precision in ("int8", "int4"):
                extra += [f"block_size={cfg.block_size}", f"is_symmetric={str(cfg.symmetric).lower()}",
                          f"accuracy_level={cfg.accuracy_level}"]
                if not cfg.symmetric:  # asymmetric blocks on the shared embedding write an invalid model (0.18)
                    extra.append("shared_embeddings=false")
            if sliding_window(model.config):
                # the builder's default windowed KV cache makes sliding layers take a past of at least the window's
                # length, so a prompt cannot be scored from an empty cache; the plain cache masks the window in
                # GroupQueryAttention (local_window_size) with the same logits, and only costs memory past the window
                extra.append("windowed_kv_cache=false")
            if extra:
                command += ["--extra_options", *extra]
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0 or not (out_dir / MODEL_FILE).is_file():
            raise ArtifactError(f"onnxruntime-genai's model builder failed (exit {done.returncode}) on "
                                f"{type(model).__name__}: {(done.stderr or done.stdout)[-2000:]}")
        carried, kept = [], {}
        if codes and cfg.precision == "int4" and cfg.symmetric:
            tied = bool(getattr(model.config, "tie_word_embeddings", False))
            carried, kept = carry_codes(out_dir, MODEL_FILE, codes, tied, cfg.block_size)
        scheme = self.scheme(cfg, len(carried), len(kept))
        settings = {"exporter": self.name, **scheme, "carried": carried}
        (out_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        quantized = cfg.precision != "fp32"
        notes = ("fp32 weights as slimkit left them" if not quantized else
                 f"the builder quantized slimkit's float weights to {cfg.precision} MatMulNBits "
                 f"({scheme['scheme']})")
        if carried:
            notes = (f"{len(carried)} MatMulNBits weights written from slimkit's int4 codes and float16 scales as they "
                     f"are (block_size={cfg.block_size}), not re-quantized"
                     + (f"; the builder quantized the other {len(kept)} ({summarize_reasons(kept)})" if kept else ""))
        elif codes:
            why = summarize_reasons(kept) if kept else f"the export is {cfg.precision}"
            notes = f"slimkit's integer codes not carried ({why}); " + notes
        if dequantized:
            notes = (f"{dequantized} quantized weight matrices (quanto) dequantized exactly to fp32 first; "
                     "activation quantization is not carried; " + notes)
        context = json.loads((out_dir / "genai_config.json").read_text())["model"].get("context_length")
        return {"format": f"onnx-{cfg.precision}", "requantized": quantized and bool(kept or not carried),
                "context_length": context,
                "notes": notes, "dequantized_modules": dequantized, "carried_tensors": len(carried),
                "requantized_tensors": len(kept) if carried else None, **scheme}

    def carrying_config(self, codes: Mapping[str, Any]) -> OnnxConfig:
        """The settings the builder runs with: under ``weights=auto``, an artifact with symmetric int4 codes is
        exported as int4 MatMulNBits (blocks = the largest allowed size dividing every group) so its codes are
        carried; otherwise the configured settings."""
        cfg = self.config
        groups = {s.group_size for s in codes.values() if s.bits == 4 and s.symmetric and s.zero_point is None}
        if cfg.weights != "auto" or not groups:
            return cfg
        blocks = [b for b in BLOCK_SIZES if all(g % b == 0 for g in groups)]
        if not blocks:
            return cfg
        return dataclasses.replace(cfg, weights="int4", block_size=max(blocks), symmetric=True)

    def scheme(self, cfg: OnnxConfig | None = None, carried: int = 0, kept: int = 0) -> dict[str, Any]:
        """The weight format, stated fully (for the report): with ``carried`` MatMulNBits weights written from
        slimkit's codes, the file holds those codes, and the builder's rounding only in the ``kept`` others."""
        cfg = cfg or self.config
        if cfg.precision == "fp32":
            return {"weights": "fp32", "scheme": "fp32"}
        embedding = ("the tied embedding/lm_head matrix quantized once (shared)" if shares_embedding(cfg) else
                     "lm_head quantized, the input embedding kept fp32")
        kind = "symmetric" if cfg.symmetric else "asymmetric (zero point per block)"
        compute = "int8 activations" if cfg.accuracy_level == 4 else "float activations"
        weights = f"{cfg.precision} {kind}, blocks of {cfg.block_size}, round-to-nearest, fp32 scales"
        if carried:
            weights = (f"{carried} MatMulNBits weights slimkit's int4 codes as they are (symmetric, blocks of "
                       f"{cfg.block_size}, their float16 scales stored as fp32)"
                       + (f", {kept} quantized by the builder (round-to-nearest)" if kept else ""))
        return {"weights": cfg.precision, "block_size": cfg.block_size, "symmetric": cfg.symmetric,
                "accuracy_level": cfg.accuracy_level,
                "scheme": f"{weights}; accuracy_level={cfg.accuracy_level} ({compute} in MatMulNBits); {embedding}"}

    @classmethod
    def open(cls, out_dir: Path, threads: int = 1) -> "OnnxSession":
        cls.check_dependencies()
        return OnnxSession(Path(out_dir), threads)


class OnnxSession:
    """An ONNX Runtime export, loaded for evaluation; each engine created on first use."""

    def __init__(self, folder: Path, threads: int = 1):
        import onnxruntime
        import onnxruntime_genai

        if not (folder / MODEL_FILE).is_file() or not (folder / "genai_config.json").is_file():
            raise ArtifactError(f"{str(folder)!r} holds no {MODEL_FILE} and genai_config.json: not an onnx export")
        self.folder, self.threads = folder, int(threads)
        self.runtime_version = f"onnxruntime {onnxruntime.__version__}, onnxruntime-genai {onnxruntime_genai.__version__}"
        self._decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        self._session = None
        self._genai = None

    def _inference_session(self):
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            self._session = onnxruntime.InferenceSession(str(self.folder / MODEL_FILE), options,
                                                         providers=["CPUExecutionProvider"])
        return self._session

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits ``[B, T, V]`` (float32) with an empty KV cache."""
        import numpy as np

        session = self._inference_session()
        ids = input_ids.to(torch.int64).numpy()
        batch = ids.shape[0]
        feeds: dict[str, Any] = {}
        for node in session.get_inputs():
            if node.name == "input_ids":
                feeds[node.name] = ids
            elif node.name == "attention_mask":
                feeds[node.name] = np.ones_like(ids)
            elif node.name.startswith("past_key_values"):
                feeds[node.name] = np.zeros((batch, self._decoder["num_key_value_heads"], 0,
                                             self._decoder["head_size"]), np.float32)
            else:
                raise ArtifactError(f"{self.folder / MODEL_FILE} has an input slimkit does not feed: {node.name}")
        (logits,) = session.run(["logits"], feeds)
        return torch.from_numpy(logits).float()

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
        """Greedy decoding of exactly ``new_tokens`` tokens (end-of-sequence ignored) with the KV cache."""
        import numpy as np
        import onnxruntime_genai as og

        if self._genai is None:
            config = og.Config(str(self.folder))
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": self.threads, "inter_op_num_threads": 1}}}}))
            self._genai = og.Model(config)
        prompt = input_ids.reshape(1, -1).to(torch.int64)
        total = prompt.shape[1] + int(new_tokens)
        params = og.GeneratorParams(self._genai)
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        generator = og.Generator(self._genai, params)
        generator.append_tokens(prompt.numpy().astype(np.int32))
        tokens: list[int] = []
        while len(tokens) < new_tokens and not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        return tokens
