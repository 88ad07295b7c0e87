"""Map a transformers causal LM onto GGUF with the ``gguf`` package (llama.cpp's gguf-py).

The format knows nothing about slimkit: this module describes each supported model family (its GGUF
architecture, the hyperparameters llama.cpp reads, and the one layout change Llama needs: q/k rows
permuted from Hugging Face's rotate-half order to GGUF's interleaved order, as llama.cpp's own
``convert_hf_to_gguf.py`` does), and lets gguf-py's ``TensorNameMap`` name the tensors and its
``quants`` module write the blocks. The shapes are read from the model in memory, so a structurally
pruned model is written as the smaller architecture it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from slimkit.core.errors import ArtifactError
from slimkit.deploy.holdings import INT_WEIGHTS, int_weight_modules
from slimkit_gguf.codes import matches, pack, smallest_holder, why_not_held

Q = gguf.GGMLQuantizationType

#: exporter.weights -> the tensor type of 2-D weight matrices (1-D norms and biases stay F32)
WEIGHT_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q5_1": Q.Q5_1, "q5_0": Q.Q5_0,
                "q4_1": Q.Q4_1, "q4_0": Q.Q4_0}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
              "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1, "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
              "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)


@dataclasses.dataclass(frozen=True)
class Family:
    """How one transformers model type maps onto a GGUF architecture."""

    arch: gguf.MODEL_ARCH
    #: q/k rows from rotate-half to interleaved order (llama.cpp's LLAMA graph applies rope that way)
    permute_qk: bool = False
    #: RMSNorm weights stored as ``w`` with the norm computing ``x * (1 + w)`` (Gemma): GGUF stores ``1 + w``
    norm_plus_one: bool = False
    #: always write the key/value head size (Gemma's loaders do not derive it from hidden / heads)
    head_dim_keys: bool = False
    #: writes the family's own hyperparameters (beyond the common ones), given the writer and the config
    extra_hparams: Callable[[gguf.GGUFWriter, Any], None] | None = None
    #: returns why llama.cpp's graph for this architecture cannot run the model the config describes, or None
    unsupported: Callable[[Any], str | None] | None = None

    def transform(self, hf_name: str, tensor: torch.Tensor, config: Any) -> torch.Tensor:
        """A transformers tensor (or the integer codes / scales of a weight, row for row) in GGUF's layout."""
        if self.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return permute_rope(tensor, config.num_attention_heads)
        if self.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return permute_rope(tensor, config.num_key_value_heads)
        if self.norm_plus_one and tensor.ndim == 1 and hf_name.endswith("norm.weight"):
            return tensor + 1
        return tensor


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_parameters(config: Any, layer_type: str = "full_attention") -> dict[str, Any]:
    """The rope parameters of one layer type (``full_attention`` / ``sliding_attention``): transformers 5 nests
    them per layer type for models with two rope bases (Gemma-3) and keeps one flat dict otherwise."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope and all(isinstance(v, dict) for v in rope.values()):
        return dict(rope.get(layer_type) or rope.get("full_attention") or {})
    return rope


def unsupported_rope(config: Any) -> str | None:
    """The rope scaling type this exporter does not map (only plain rope), or None."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    kinds = [v for v in rope.values() if isinstance(v, dict)] or [rope]
    return next((k.get("rope_type") for k in kinds if k.get("rope_type") not in (None, "default")), None)


def _rope_theta(config: Any, layer_type: str = "full_attention") -> float:
    kind = unsupported_rope(config)
    if kind is not None:
        raise ArtifactError(f"rope scaling {kind!r} is not mapped to GGUF by this exporter "
                            "(only plain rope): export the model with llama.cpp's convert_hf_to_gguf.py")
    rope = rope_parameters(config, layer_type)
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _gemma3_hparams(writer: gguf.GGUFWriter, config: Any) -> None:
    """Gemma-3 (llama.cpp's GEMMA3 graph): sliding-window layers with their own rope base, listed per layer.
    The embedding scale (sqrt(hidden)) and the ``1 + w`` norms are in llama.cpp's graph / the tensors; the
    query scale is 1/sqrt(head_dim) there (checked against ``query_pre_attn_scalar`` by :func:`_gemma3_unsupported`)."""
    types = list(getattr(config, "layer_types", None) or [])
    if "sliding_attention" in types and getattr(config, "sliding_window", None):
        writer.add_sliding_window(int(config.sliding_window))
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in types])
        writer.add_rope_freq_base_swa(_rope_theta(config, "sliding_attention"))
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))


def _gemma3_unsupported(config: Any) -> str | None:
    if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        return f"hidden_activation={config.hidden_activation!r} (llama.cpp's Gemma-3 graph runs gelu_pytorch_tanh)"
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if scalar is not None and int(scalar) != head_dim(config) and config.num_hidden_layers != 62:
        return (f"query_pre_attn_scalar={scalar} with head_dim={head_dim(config)} (llama.cpp scales queries by "
                "1/sqrt(head_dim), except for the 62-layer 27B model)")
    if getattr(config, "attn_logit_softcapping", None):
        return "attn_logit_softcapping (llama.cpp's Gemma-3 graph has none)"
    if getattr(config, "use_bidirectional_attention", False):
        return "use_bidirectional_attention=true (an embedding model, not a causal LM)"
    types = set(getattr(config, "layer_types", None) or [])
    if types - {"sliding_attention", "full_attention"}:
        return f"layer_types {sorted(types)}"
    return None


#: transformers ``model_type`` -> family. Checked by reading the file back with transformers' GGUF loader
#: (tests) and, for llama and gemma3_text, running it in llama.cpp (tests; benchmarks/deploy.py, deploy_carry.py).
FAMILIES = {
    "llama": Family(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "qwen2": Family(gguf.MODEL_ARCH.QWEN2),
    "qwen3": Family(gguf.MODEL_ARCH.QWEN3),
    "gemma3_text": Family(gguf.MODEL_ARCH.GEMMA3, norm_plus_one=True, head_dim_keys=True, extra_hparams=_gemma3_hparams,
                          unsupported=_gemma3_unsupported),
}


def permute_rope(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Hugging Face's rotate-half q/k rows -> GGUF llama's interleaved pairs (convert_hf_to_gguf's permute)."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def tensor_type(gguf_name: str, data: torch.Tensor, weights: str, embeddings: str, tied: bool) -> Any:
    """The GGUF type of one tensor: 1-D tensors F32; 2-D ones the chosen format, except (``embeddings=auto``)
    the output matrix and a tied embedding at Q8_0 under 4/5-bit formats, the rule llama.cpp's quantizer
    applies when a row is not a multiple of 256 (otherwise it uses Q6_K, which gguf-py cannot write);
    rows that are not whole blocks fall back to F16."""
    if data.ndim < 2:
        return Q.F32
    wanted = WEIGHT_TYPES[weights]
    is_output = is_output_matrix(gguf_name, tied)
    if is_output and embeddings != "auto":
        wanted = WEIGHT_TYPES[embeddings]
    elif is_output and wanted not in FLOAT_TYPES and wanted is not Q.Q8_0:
        wanted = Q.Q8_0
    if wanted not in FLOAT_TYPES and data.shape[-1] % gguf.GGML_QUANT_SIZES[wanted][0]:
        return Q.F16
    return wanted


def is_output_matrix(gguf_name: str, tied: bool) -> bool:
    """The output projection, or the input embedding when it is tied to it."""
    return gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight")


@dataclasses.dataclass(frozen=True)
class Choice:
    """How one tensor is written: its type, whether slimkit's integer codes are written as they are
    (``carried``), and, for a tensor with codes that are not, why."""

    qtype: Any
    carried: bool = False
    reason: str | None = None


def choose_type(gguf_name: str, data: torch.Tensor, spec: Any, weights: str, embeddings: str, tied: bool,
                auto: bool = False) -> Choice:
    """The type of one tensor. Without integer codes (``spec`` None): :func:`tensor_type`. With codes: the
    asked format when it holds them; under ``auto`` (``exporter.gguf.weights=auto``, for which ``weights`` is
    the model's float type, or ``embeddings=auto`` for the output matrix) the smallest block format that holds
    them; otherwise what :func:`tensor_type` chooses for the dequantized float weights (the float type under
    ``auto``: exact values in F32), with the reason."""
    fallback = tensor_type(gguf_name, data, weights, embeddings, tied)
    if spec is None:
        return Choice(fallback)
    output = is_output_matrix(gguf_name, tied)
    asked = embeddings if output and embeddings != "auto" else weights
    if auto or (output and embeddings == "auto"):
        holder = smallest_holder(spec)
        if holder is not None:
            return Choice(holder, carried=True)
        nearest = Q.Q4_0 if spec.bits <= 4 else Q.Q5_0 if spec.bits == 5 else Q.Q8_0
        return Choice(fallback, reason=why_not_held(spec, nearest))
    wanted = WEIGHT_TYPES[asked]
    reason = why_not_held(spec, wanted)
    return Choice(wanted, carried=True) if reason is None else Choice(fallback, reason=reason)


def _encode(array: np.ndarray, qtype: Any) -> tuple[np.ndarray, Any]:
    if qtype is Q.F32:
        return array.astype(np.float32), None
    if qtype is Q.F16:
        return array.astype(np.float16), None
    return gguf.quants.quantize(array, qtype), gguf.quant_shape_to_byte_shape(array.shape, qtype)


def write_gguf(model: torch.nn.Module, tokenizer: Any, path: Path, weights: str, embeddings: str = "auto",
               carry_codes: bool = False) -> dict[str, Any]:
    """Write ``model`` (a supported family, float weights) and ``tokenizer`` into one GGUF file. Integer codes
    a module carries are written as they are where ``weights`` holds them, or, with ``carry_codes`` (the
    exporter's ``weights=auto``), in the smallest block format that does (see :func:`choose_type`).

    Returns ``{"tensor_types": {type: count}, "architecture": ..., "tokenizer_pre": ...}``."""
    config = model.config
    family = FAMILIES[config.model_type]
    arch = gguf.MODEL_ARCH_NAMES[family.arch]
    writer = gguf.GGUFWriter(str(path), arch)
    layers = config.num_hidden_layers
    writer.add_name(str(getattr(config, "_name_or_path", "") or config.model_type))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(_rope_theta(config))
    dim = head_dim(config)
    writer.add_rope_dimension_count(dim)
    if family.head_dim_keys or dim * config.num_attention_heads != config.hidden_size:  # e.g. after pruning heads
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    if family.extra_hparams is not None:
        family.extra_hparams(writer, config)
    writer.add_vocab_size(config.vocab_size)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    pre = add_vocab(writer, tokenizer, config.vocab_size)

    names = gguf.get_tensor_name_map(family.arch, layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    counts: dict[str, int] = {}
    matrices: dict[str, int] = {}  # the 2-D tensors' types: the most common one names the file
    codes = int_weight_modules(model)
    carried: dict[str, str] = {}  # GGUF tensor -> type, written from slimkit's codes as they are
    not_carried: dict[str, str] = {}  # GGUF tensor with codes -> "TYPE: why"
    requantized: list[str] = []  # tensors whose blocks gguf-py's quantizer computed
    types: dict[str, str] = {}
    for hf_name, tensor in float_tensors(model).items():
        if (tied and hf_name == "lm_head.weight") or hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ArtifactError(f"the tensor {hf_name!r} has no GGUF name in the {arch} layout; a {config.model_type} "
                                "model with extra or renamed modules cannot be exported by this exporter")
        data = family.transform(hf_name, tensor.detach().float(), config)
        module_name, _, leaf = hf_name.rpartition(".")
        spec = codes.get(module_name) if leaf == "weight" else None
        if spec is not None and not matches(tensor, spec):
            raise ArtifactError(f"{module_name} carries integer codes ({INT_WEIGHTS}) that no longer give its weight: "
                                "a stage changed the weight after quantizing it; re-quantize or drop the codes")
        choice = choose_type(name, data, spec, weights, embeddings, tied, carry_codes)
        if choice.carried:
            blocks = pack(family.transform(hf_name, spec.codes, config), family.transform(hf_name, spec.scale, config),
                          spec.group_size, choice.qtype)
            array, raw_shape = blocks, gguf.quant_shape_to_byte_shape(data.shape, choice.qtype)
            carried[name] = choice.qtype.name
        else:
            array, raw_shape = _encode(data.numpy(), choice.qtype)
            if choice.qtype not in FLOAT_TYPES:
                requantized.append(name)
            if spec is not None:
                not_carried[name] = f"{choice.qtype.name}: {choice.reason}"
        writer.add_tensor(name, array, raw_shape=raw_shape, raw_dtype=None if raw_shape is None else choice.qtype)
        counts[choice.qtype.name] = counts.get(choice.qtype.name, 0) + 1
        types[name] = choice.qtype.name
        if data.ndim >= 2:
            matrices[choice.qtype.name] = matrices.get(choice.qtype.name, 0) + 1
    dominant = max(matrices, key=lambda t: (matrices[t], t == weights.upper())) if matrices else "F32"
    writer.add_file_type(FILE_TYPES.get(dominant.lower(), FILE_TYPES["f32"]))
    quiet = logging.getLogger("gguf.gguf_writer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs every file it writes at INFO
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    finally:
        quiet.setLevel(level)
    return {"tensor_types": counts, "architecture": arch, "tokenizer_pre": pre, "main_type": dominant,
            "carried": carried, "not_carried": not_carried, "requantized_tensors": requantized,
            "tensor_types_by_name": types}


def float_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` as a float tensor, by its transformers name. Weights a backend holds as
    quantized tensors that can dequantize themselves (optimum-quanto's) are dequantized, exactly; anything
    else that is not float is an :class:`ArtifactError`."""
    out: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            tensor = param.dequantize() if backend_quantized(param) else param
            if not tensor.is_floating_point():
                raise ArtifactError(f"the tensor {full!r} is {tensor.dtype}, not float: GGUF export needs float "
                                    "weights (drop the quantizer and choose exporter.gguf.weights instead)")
            out[full] = tensor.detach()
    held = tuple(f"{name}.weight." for name in quantized_modules(model))  # a quantized weight's own codes/scales
    for key, tensor in model.state_dict().items():
        if not tensor.is_floating_point() and not key.startswith(held):
            raise ArtifactError(f"the tensor {key!r} is {tensor.dtype}, not float: GGUF export needs float "
                                "weights (drop the quantizer and choose exporter.gguf.weights instead)")
    return out


def quantized_modules(model: torch.nn.Module) -> dict[str, str]:
    """Modules whose weights a backend holds quantized (``name -> tensor class``)."""
    return {name: type(m.weight).__name__ for name, m in model.named_modules() if backend_quantized(getattr(m, "weight", None))}


def backend_quantized(tensor: Any) -> bool:
    """A tensor subclass that holds quantized data and can dequantize itself (optimum-quanto's QTensor)."""
    return (isinstance(tensor, torch.Tensor) and type(tensor) not in (torch.Tensor, torch.nn.Parameter)
            and callable(getattr(tensor, "dequantize", None)))


# --- the tokenizer: a byte-level BPE vocabulary (llama.cpp's "gpt2" tokenizer model) ---------------

#: llama.cpp identifies a BPE pre-tokenizer by hashing the tokens of this text (convert_hf_to_gguf.py)
CHECK_TEXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ '
              '🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
              '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
              '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
#: the hashes of pre-tokenizers we export (llama.cpp's table); others are written as "default"
PRE_TOKENIZERS = {"855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
                  "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2"}


def tokenizer_kind(tokenizer: Any) -> tuple[str, dict[str, Any]]:
    """``("gpt2", spec)`` for a byte-level BPE tokenizer, ``("llama", spec)`` for a SentencePiece-style BPE with
    byte fallback (spaces as "▁", Gemma/Llama-2 style), with ``spec`` the tokenizer.json; else ArtifactError."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    if model.get("type") == "BPE" and "ByteLevel" in json.dumps(spec.get("pre_tokenizer")):
        return "gpt2", spec
    normalizer = json.dumps(spec.get("normalizer"), ensure_ascii=False)
    if model.get("type") == "BPE" and model.get("byte_fallback") and "\u2581" in normalizer:
        return "llama", spec
    raise ArtifactError("the gguf exporter writes byte-level BPE tokenizers (GPT-2/Llama-3/SmolLM style) and "
                        "SentencePiece-style BPE with byte fallback (Gemma); this model's tokenizer is "
                        f"{model.get('type', type(tokenizer).__name__)}")


def _token_table(tokenizer: Any, vocab_size: int, byte_tokens: bool) -> tuple[list[str], list[Any]]:
    """Token strings by id and their GGUF token types (missing ids become unused placeholders)."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            is_byte = byte_tokens and len(token) == 6 and token.startswith("<0x") and token.endswith(">")
            types.append(gguf.TokenType.BYTE if is_byte else gguf.TokenType.NORMAL)
    return tokens, types


def add_vocab(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int) -> str:
    """Write the tokenizer (vocabulary, merges or scores, special tokens); returns the pre-tokenizer name
    ("default" for a SentencePiece-style vocabulary, which llama.cpp does not pre-split).

    A SentencePiece-style BPE is written as llama.cpp's "llama" model, whose tokenizer merges the adjacent pair
    with the highest score: each token a merge produces scores minus that merge's rank, so llama.cpp merges in
    the order the tokenizer's merge list gives; tokens no merge produces (characters, bytes, specials) score 0."""
    kind, spec = tokenizer_kind(tokenizer)
    tokens, types = _token_table(tokenizer, vocab_size, byte_tokens=kind == "llama")
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        pre = PRE_TOKENIZERS.get(hashlib.sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest(), "default")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        merges = spec["model"].get("merges") or []
        writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    else:
        pre = "default"
        rank = {}
        for r, merge in enumerate(spec["model"].get("merges") or []):
            left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
            rank.setdefault(left + right, r)
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_scores([-float(rank[t]) if t in rank else 0.0 for t in tokens])
        writer.add_token_types(types)
        writer.add_add_space_prefix(False)  # the normalizer only replaces spaces by "▁"
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(int(token_id))
    # whether the tokenizer starts a text with BOS (SmolLM2: no; Gemma: yes)
    writer.add_add_bos_token(bool(tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id])
                             if tokenizer.bos_token_id is not None else False)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)
    return pre
