"""Where each model family keeps its attention and MLP projections: one table, read by every backend
that needs to know more than "a list of Linear layers" (structured pruning, SmoothQuant).

A :class:`Family` names, per Hugging Face ``model_type``, the decoder-block list, the attention
projections (separate ``q/k/v`` or one fused ``qkv`` and its row layout), the output projection, the
MLP projections (``gate/up/down``, a fused ``gate_up``, or ungated ``up/down`` such as ``fc1/fc2``),
the norms that feed them, and the config keys holding the sizes. The same idea as GPTQModel's
``module_tree``, llm-compressor's SmoothQuant mappings per ``model_type`` and onnxruntime-genai's
builder classes, reduced to what slimkit's backends read. A backend asks :func:`family_of` for a
model (or only its config, before any weights load) and gets a :class:`ConfigError` naming the
model type, the backend and the supported families when the table has no entry.

Projection modules are ``torch.nn.Linear`` or transformers' ``Conv1D`` (GPT-2; weight stored
transposed ``[in, out]``); :func:`slimkit.toolkit.modules.weight_matrix` gives both as ``[out, in]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import torch

from slimkit.core.errors import ConfigError

#: fused q/k/v row layouts: [q; k; v] blocks (Phi-3, GPT-2) or per head [q_h; k_h; v_h] (GPT-NeoX)
QKV_LAYOUTS = ("concat", "per_head")
#: norm kinds: x * w (RMSNorm), x * (1 + w) (Gemma's RMSNorm), x * w + b (LayerNorm)
NORM_KINDS = ("rms", "rms_plus_one", "layer")
#: activations f with f(x / s) = f(x) / s for s > 0: an ungated MLP's up -> down fold is exact only for these
HOMOGENEOUS_ACTIVATIONS = ("relu",)


@dataclasses.dataclass(frozen=True)
class Family:
    """Where one family's decoder blocks keep their projections (names relative to a block)."""

    #: human-readable name for messages
    label: str
    #: attribute path from the *ForCausalLM model to the ModuleList of decoder blocks
    layers: str
    #: the attention module, relative to a block
    attention: str
    #: the output projection, relative to the attention module
    o: str
    #: separate q/k/v projections relative to the attention module (None when fused)
    q: Optional[str] = None
    k: Optional[str] = None
    v: Optional[str] = None
    #: one fused q/k/v projection (relative to the attention module) and its row layout
    qkv: Optional[str] = None
    qkv_layout: str = "concat"
    #: the MLP module relative to a block ("" = the block itself, as in OPT)
    mlp: str = "mlp"
    #: MLP projections relative to the MLP module; ``gate`` None = ungated (act(up) feeds down)
    up: Optional[str] = None
    gate: Optional[str] = None
    down: str = "down_proj"
    #: fused [gate; up] rows (Phi-3)
    gate_up: Optional[str] = None
    #: the norms whose output feeds the attention / the MLP projections (relative to a block)
    attn_norm: Optional[str] = None
    mlp_norm: Optional[str] = None
    norm_kind: str = "rms"
    #: config keys: number of query heads, KV heads (None: as many as query heads), MLP width
    heads_key: str = "num_attention_heads"
    kv_heads_key: Optional[str] = "num_key_value_heads"
    intermediate_key: str = "intermediate_size"
    #: the config key that pins the head size (None: the model derives it as hidden/heads, so a model with
    #: fewer heads cannot be described by its config)
    head_dim_key: Optional[str] = "head_dim"
    #: config key whose False value means norms come *after* the sublayers (OPT-350m): no norm folds
    pre_norm_flag: Optional[str] = None
    #: config key naming the MLP activation
    activation_key: str = "hidden_act"
    #: whether each attention module keeps its own head count (False: it reads the shared config, as Phi-3
    #: does when splitting qkv_proj, so every layer must keep the same number of heads)
    per_layer_heads: bool = True

    @property
    def fused_qkv(self) -> bool:
        return self.qkv is not None

    @property
    def gated(self) -> bool:
        return self.gate is not None or self.gate_up is not None


_LLAMA = Family("Llama-style", layers="model.layers", attention="self_attn", q="q_proj", k="k_proj", v="v_proj",
                o="o_proj", up="up_proj", gate="gate_proj", attn_norm="input_layernorm",
                mlp_norm="post_attention_layernorm")

#: model_type -> family description; add a family here and every backend that reads the table follows
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": dataclasses.replace(_LLAMA, label="Mistral"),
    "qwen2": dataclasses.replace(_LLAMA, label="Qwen2"),
    "qwen3": dataclasses.replace(_LLAMA, label="Qwen3"),
    "gemma3_text": dataclasses.replace(_LLAMA, label="Gemma-3", mlp_norm="pre_feedforward_layernorm",
                                       norm_kind="rms_plus_one", activation_key="hidden_activation"),
    "phi3": Family("Phi-3", layers="model.layers", attention="self_attn", qkv="qkv_proj", qkv_layout="concat",
                   o="o_proj", gate_up="gate_up_proj", attn_norm="input_layernorm",
                   mlp_norm="post_attention_layernorm", per_layer_heads=False),
    "gpt2": Family("GPT-2", layers="transformer.h", attention="attn", qkv="c_attn", qkv_layout="concat", o="c_proj",
                   up="c_fc", down="c_proj", attn_norm="ln_1", mlp_norm="ln_2", norm_kind="layer",
                   kv_heads_key=None, intermediate_key="n_inner", head_dim_key=None,
                   activation_key="activation_function"),
    "opt": Family("OPT", layers="model.decoder.layers", attention="self_attn", q="q_proj", k="k_proj", v="v_proj",
                  o="out_proj", mlp="", up="fc1", down="fc2", attn_norm="self_attn_layer_norm",
                  mlp_norm="final_layer_norm", norm_kind="layer", kv_heads_key=None, intermediate_key="ffn_dim",
                  head_dim_key=None, pre_norm_flag="do_layer_norm_before", activation_key="activation_function"),
    "gpt_neox": Family("GPT-NeoX", layers="gpt_neox.layers", attention="attention", qkv="query_key_value",
                       qkv_layout="per_head", o="dense", up="dense_h_to_4h", down="dense_4h_to_h",
                       attn_norm="input_layernorm", mlp_norm="post_attention_layernorm", norm_kind="layer",
                       kv_heads_key=None, head_dim_key=None),
}


def supported(families: Optional[Sequence[str]] = None) -> str:
    """The supported model types as a sentence fragment."""
    return ", ".join(sorted(families if families is not None else FAMILIES))


def model_type_of(config: Any) -> str:
    return str(getattr(config, "model_type", None) or type(config).__name__)


def family_of(config: Any, backend: str, key: str, value: Any, instead: str = "") -> Family:
    """The family of a model config (``model.config`` or an ``AutoConfig``: callable before any weights load).

    Without a table entry: a :class:`ConfigError` on ``key=value`` (the setting that needs the description)
    naming the model type, the backend and the supported families; ``instead`` names the alternatives
    (e.g. ``"false, or "``)."""
    model_type = model_type_of(config)
    family = FAMILIES.get(model_type)
    if family is None:
        raise ConfigError(key, value, f"{instead}a model whose model_type is one of: {supported()}",
                          f"the {backend} backend needs to know where the attention and MLP projections of "
                          f"model_type {model_type!r} live, and slimkit.toolkit.families has no entry for it")
    return family


# --- reading a config --------------------------------------------------------------------------------

def _get(config: Any, key: Optional[str]) -> Any:
    return getattr(config, key, None) if key else None


@dataclasses.dataclass
class Sizes:
    """A config's attention and MLP sizes as the family reads them."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int


def config_sizes(config: Any, family: Family) -> Sizes:
    hidden = int(config.hidden_size)
    heads = int(_get(config, family.heads_key))
    kv = _get(config, family.kv_heads_key) or heads
    head_dim = _get(config, family.head_dim_key) or hidden // heads
    inter = _get(config, family.intermediate_key) or 4 * hidden  # GPT-2: n_inner None means 4 x hidden
    return Sizes(hidden, heads, int(kv), int(head_dim), int(inter))


def activation(config: Any, family: Family) -> str:
    return str(_get(config, family.activation_key) or "").lower()


def pre_norm(config: Any, family: Family) -> bool:
    """Whether the family's norms feed the projections (False for OPT with do_layer_norm_before=False)."""
    flag = _get(config, family.pre_norm_flag)
    return True if flag is None else bool(flag)


# --- reading a model -----------------------------------------------------------------------------------

def _sub(root: torch.nn.Module, path: Optional[str]) -> Optional[torch.nn.Module]:
    if path is None:
        return None
    if path == "":
        return root
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


@dataclasses.dataclass
class Block:
    """One decoder block's projection modules and norms (None where the family has none)."""

    index: int
    module: torch.nn.Module
    attention: torch.nn.Module
    q: Optional[torch.nn.Module]
    k: Optional[torch.nn.Module]
    v: Optional[torch.nn.Module]
    qkv: Optional[torch.nn.Module]
    o: torch.nn.Module
    mlp: torch.nn.Module
    up: Optional[torch.nn.Module]
    gate: Optional[torch.nn.Module]
    gate_up: Optional[torch.nn.Module]
    down: torch.nn.Module
    attn_norm: Optional[torch.nn.Module]
    mlp_norm: Optional[torch.nn.Module]

    def projections(self) -> dict[str, torch.nn.Module]:
        """The block's projection modules by role."""
        roles = ("q", "k", "v", "qkv", "o", "up", "gate", "gate_up", "down")
        return {r: getattr(self, r) for r in roles if getattr(self, r) is not None}


def decoder_blocks(model: torch.nn.Module, family: Family, key: str, value: Any) -> list[Block]:
    """Every decoder block of ``model`` resolved through ``family``; a :class:`ConfigError` when the model
    does not have the modules the table promises (e.g. a custom variant of a known model type)."""
    from slimkit.toolkit.modules import linear_types

    layers = _sub(model, family.layers)
    model_type = model_type_of(model.config)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ConfigError(key, value, f"a {family.label} model with its decoder blocks at `{family.layers}`",
                          f"this {model_type!r} model ({type(model).__name__}) has none there")
    blocks = []
    types = linear_types()
    for i, layer in enumerate(layers):
        attn, mlp = _sub(layer, family.attention), _sub(layer, family.mlp)
        found = {}
        for role in ("q", "k", "v", "qkv", "o"):
            found[role] = _sub(attn, getattr(family, role)) if attn is not None else None
        for role in ("up", "gate", "gate_up", "down"):
            found[role] = _sub(mlp, getattr(family, role)) if mlp is not None else None
        for role, module in found.items():
            name = getattr(family, role)
            if name is not None and type(module) not in types:  # subclasses (quantized/LoRA) are not safe to edit
                what = "missing" if module is None else type(module).__name__
                raise ConfigError(key, value, f"a {family.label} model whose projections are torch.nn.Linear or "
                                  f"transformers Conv1D", f"block {i}: `{role}` ({name}) is {what}")
        blocks.append(Block(i, layer, attn, found["q"], found["k"], found["v"], found["qkv"], found["o"], mlp,
                            found["up"], found["gate"], found["gate_up"], found["down"],
                            _sub(layer, family.attn_norm), _sub(layer, family.mlp_norm)))
    return blocks


def block_sizes(block: Block, family: Family, head_dim: int) -> Sizes:
    """One block's sizes read from its modules' shapes (they differ from the config's after non-uniform
    structured pruning); ``head_dim`` comes from :func:`config_sizes`."""
    from slimkit.toolkit.modules import in_features, out_features

    d = head_dim
    if family.fused_qkv:
        total = out_features(block.qkv) // d
        heads = total // 3 if family.qkv_layout == "per_head" else in_features(block.o) // d
        kv = heads if family.qkv_layout == "per_head" else (total - heads) // 2
    else:
        heads, kv = out_features(block.q) // d, out_features(block.k) // d
    return Sizes(out_features(block.o), heads, kv, d, in_features(block.down))


# --- which rows of which module hold a head or a channel ------------------------------------------------

def head_rows(block: Block, family: Family, sizes: Sizes, role: str, heads: torch.Tensor) -> tuple[torch.nn.Module, torch.Tensor]:
    """The module and its output rows (of the ``[out, in]`` weight) that hold ``role`` ('q', 'k' or 'v') for
    the given head indices (query heads for 'q', KV heads for 'k'/'v')."""
    d = sizes.head_dim
    offsets = torch.arange(d)
    heads = torch.as_tensor(heads, dtype=torch.long)
    if not family.fused_qkv:
        return getattr(block, role), (heads[:, None] * d + offsets).reshape(-1)
    if family.qkv_layout == "per_head":  # [q_h; k_h; v_h] per head (multi-head attention only)
        part = ("q", "k", "v").index(role)
        return block.qkv, (heads[:, None] * 3 * d + part * d + offsets).reshape(-1)
    start = {"q": 0, "k": sizes.heads * d, "v": (sizes.heads + sizes.kv_heads) * d}[role]
    return block.qkv, (start + heads[:, None] * d + offsets).reshape(-1)


def mlp_rows(block: Block, sizes: Sizes, role: str, channels: torch.Tensor) -> tuple[torch.nn.Module, torch.Tensor]:
    """The module and output rows holding MLP ``role`` ('up' or 'gate') for the given channels."""
    channels = torch.as_tensor(channels, dtype=torch.long)
    if block.gate_up is not None:  # [gate; up]
        return block.gate_up, channels + (sizes.intermediate if role == "up" else 0)
    return getattr(block, role), channels


__all__ = ["FAMILIES", "Block", "Family", "Sizes", "activation", "block_sizes", "config_sizes", "decoder_blocks", "family_of",
           "head_rows", "mlp_rows", "model_type_of", "pre_norm", "supported"]
