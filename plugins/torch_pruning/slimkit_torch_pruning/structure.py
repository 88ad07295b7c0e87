"""The mechanics of structured pruning on decoder-only models of every family in
:mod:`slimkit.toolkit.families` (Llama-style, Phi-3's fused projections, GPT-2's Conv1D, OPT, GPT-NeoX).

Finds the prunable structures (MLP channels, attention heads grouped with their KV head) through the
family table, scores them, removes the lowest-scoring ones with Torch-Pruning's low-level pruning
functions (``tp.prune_linear_out_channels`` / ``tp.prune_linear_in_channels``; GPT-2's transposed
``Conv1D`` is sliced the same way along its other axis) and patches the config so a stock
``from_pretrained`` rebuilds the smaller model. A fused projection (``qkv_proj``, ``gate_up_proj``,
``c_attn``, ``query_key_value``) loses the rows of every removed structure it holds, in its own layout.

Torch-Pruning's dependency graph is not used: on transformers 5.24 its ``MetaPruner`` did not finish
tracing a 4-layer tiny Llama within 300 s, and it has no notion of query heads sharing a KV head.
The coupled index sets are few and fixed by the family, so they are read from the table.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
import torch_pruning as tp

from slimkit.core.errors import ConfigError
from slimkit.toolkit.families import (FAMILIES, Block, Family, block_sizes, config_sizes, decoder_blocks, family_of,
                                      head_rows, mlp_rows, model_type_of, supported)
from slimkit.toolkit.modules import in_features, is_conv1d, out_features, weight_matrix

#: a block's projection roles (slimkit.toolkit.families.Block) by part
ATTN_ROLES = ("q", "k", "v", "qkv", "o")
MLP_ROLES = ("gate", "up", "gate_up", "down")
#: the setting that chose this backend, named in errors about the model
KEY, VALUE = "pruner", "torch_pruning"
INSTEAD = "an unstructured pruner (magnitude, wanda and taylor prune any Linear/Conv1D model), or "


class UnsupportedArchitectureError(ConfigError):
    """The model is not an architecture this pruner understands; the model was not changed."""

    def __init__(self, model_type: str, why: str):
        super().__init__(KEY, VALUE, f"{INSTEAD}a model whose model_type is one of: {supported()}",
                         f"model_type {model_type!r}: {why}")


@dataclasses.dataclass
class LayerDims:
    """The prunable sizes of one decoder layer."""

    intermediate: int
    heads: int
    kv_heads: int

    @property
    def queries_per_kv(self) -> int:
        return self.heads // self.kv_heads


@dataclasses.dataclass
class Arch:
    """The decoder blocks of a supported model and their current sizes."""

    family: Family
    blocks: list[Block]
    head_dim: int
    dims: list[LayerDims]

    @property
    def layers(self) -> list[torch.nn.Module]:
        return [b.module for b in self.blocks]


def check_config(config: Any, heads_sparsity: float = 0.0) -> Family:
    """What the model config alone tells (callable on an ``AutoConfig`` before any weights load): the family
    is in the table, and attention heads are only removed where the config can describe fewer of them."""
    family = family_of(config, VALUE, KEY, VALUE, instead=INSTEAD)
    model_type = model_type_of(config)
    for key in (family.heads_key, family.kv_heads_key):
        if key and not isinstance(getattr(config, key, None), int):
            raise UnsupportedArchitectureError(model_type, f"its config has no integer {key}")
    if heads_sparsity > 0 and family.head_dim_key is None:
        heads_ok = sorted(t for t, f in FAMILIES.items() if f.head_dim_key is not None)
        raise ConfigError("pruner.heads_sparsity", heads_sparsity,
                          f"0 for {VALUE} on model_type {model_type!r} (its MLP channels are pruned; attention heads "
                          f"are pruned for: {', '.join(heads_ok)})",
                          f"{family.label}'s config derives the head size from the hidden size and the head count, "
                          "so a model with fewer heads cannot be described by its config")
    return family


def inspect(model: torch.nn.Module) -> Arch:
    """Check ``model`` is a supported architecture and read its per-layer sizes (changes nothing)."""
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedArchitectureError(type(model).__name__, "it has no Hugging Face config")
    family = check_config(config)
    model_type = model_type_of(config)
    blocks = decoder_blocks(model, family, KEY, VALUE)
    head_dim = config_sizes(config, family).head_dim
    dims = []
    for block in blocks:
        i = block.index
        attn_out = out_features(block.qkv) if block.qkv is not None else out_features(block.q)
        if attn_out % head_dim or in_features(block.o) % head_dim:
            raise UnsupportedArchitectureError(model_type, f"layer {i}: attention widths are not whole heads of "
                                               f"head_dim {head_dim}")
        sizes = block_sizes(block, family, head_dim)
        if block.qkv is None and out_features(block.k) != out_features(block.v):
            raise UnsupportedArchitectureError(model_type, f"layer {i}: k and v widths differ")
        if sizes.kv_heads < 1 or sizes.heads % sizes.kv_heads or in_features(block.o) != sizes.heads * head_dim:
            raise UnsupportedArchitectureError(model_type, f"layer {i}: {sizes.heads} query heads do not group over "
                                               f"{sizes.kv_heads} KV heads")
        up_rows = out_features(block.gate_up) // 2 if block.gate_up is not None else out_features(block.up)
        if up_rows != sizes.intermediate or (block.gate is not None and out_features(block.gate) != up_rows):
            raise UnsupportedArchitectureError(model_type, f"layer {i}: MLP widths disagree")
        dims.append(LayerDims(sizes.intermediate, sizes.heads, sizes.kv_heads))
    return Arch(family, blocks, head_dim, dims)


def _sizes(arch: Arch, i: int):
    return block_sizes(arch.blocks[i], arch.family, arch.head_dim)


def nearest_valid(requested: float, total: int, step: int = 1, keep_min: int = 1) -> list[float]:
    """The realisable removal fractions of ``total`` structures (removing multiples of ``step`` of
    what is kept) that lie nearest ``requested``, at most two."""
    keeps = [k for k in range(total, keep_min - 1, -1) if k % step == 0 or k == total]
    ratios = sorted({round(1 - k / total, 4) for k in keeps})
    below = [r for r in ratios if r <= requested]
    above = [r for r in ratios if r > requested]
    return ([below[-1]] if below else []) + ([above[0]] if above else [])


def target_keep(key: str, requested: float, total: int, step: int, tolerance: float, what: str) -> int:
    """How many of ``total`` structures to keep for a removal fraction ``requested``.

    The kept count is a multiple of ``step`` (or ``total`` itself); a fraction farther than
    ``tolerance`` from every realisable one is a :class:`ConfigError` listing the nearest.
    """
    if requested == 0:
        return total
    wanted = total * (1 - requested)
    keep = int(round(wanted / step)) * step if step > 1 else int(round(wanted))
    keep = min(keep, total)
    achieved = 1 - keep / total
    if keep < 1 or abs(achieved - requested) > tolerance:
        options = nearest_valid(requested, total, step)
        raise ConfigError(key, requested, f"a fraction realisable uniformly in every layer; nearest: "
                          + " or ".join(f"{r:g}" for r in options),
                          f"{total} {what} per layer" + (f", kept in multiples of {step}" if step > 1 else ""))
    return keep


# --- which weight slices make up each structure ------------------------------------------------------

def _structures(arch: Arch, i: int) -> dict[str, list[tuple[torch.nn.Module, str, torch.Tensor]]]:
    """Per kind ('mlp', 'q', 'kv'), the weight slices of each structure: ``(module, 'rows'|'cols', index)``
    with ``index`` of shape ``[structures, entries]`` into the module's ``[out, in]`` weight."""
    block, family, sizes = arch.blocks[i], arch.family, _sizes(arch, i)
    d = sizes.head_dim

    def stacked(fn, n):  # per-structure index rows
        module, rows = fn(torch.arange(n))
        return module, rows.reshape(n, -1)

    channels = torch.arange(sizes.intermediate)
    mlp = []
    for role in (("gate", "up") if family.gated else ("up",)):
        module, rows = stacked(lambda idx, r=role: mlp_rows(block, sizes, r, idx), sizes.intermediate)
        mlp.append((module, "rows", rows))
    mlp.append((block.down, "cols", channels[:, None]))
    q_module, q_rows = stacked(lambda idx: head_rows(block, family, sizes, "q", idx), sizes.heads)
    q = [(q_module, "rows", q_rows), (block.o, "cols", torch.arange(sizes.heads)[:, None] * d + torch.arange(d))]
    kv = []
    for role in ("k", "v"):
        module, rows = stacked(lambda idx, r=role: head_rows(block, family, sizes, r, idx), sizes.kv_heads)
        kv.append((module, "rows", rows))
    return {"mlp": mlp, "q": q, "kv": kv}


# --- importance ------------------------------------------------------------------------------------

def _score(grads: dict[torch.Tensor, torch.Tensor] | None,
           slices: Sequence[tuple[torch.nn.Module, str, torch.Tensor]], n: int) -> torch.Tensor:
    """Per-structure score summed over coupled weight slices.

    l2: sum of squares (the group criterion of ``tp.importance.GroupMagnitudeImportance(p=2)``); taylor:
    sum of |w * dL/dw| (first-order Taylor, as ``tp.importance.GroupTaylorImportance``).
    """
    total = torch.zeros(n, dtype=torch.float64)
    for module, axis, index in slices:
        w = weight_matrix(module).detach().float()
        value = w.pow(2) if grads is None else (w * weight_matrix(module, grads[module.weight]).float()).abs()
        if axis == "rows":
            total += value[index.reshape(-1)].reshape(n, -1).sum(1).double()
        else:
            total += value[:, index.reshape(-1)].reshape(value.shape[0], n, -1).sum((0, 2)).double()
    return total


def layer_scores(arch: Arch, i: int, importance: str, grads: dict | None, generator: torch.Generator,
                 activations: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Scores of layer ``i``'s MLP channels, KV groups and query heads (higher = more important).

    ``activations`` (importance 'activation') holds this layer's summed squared inputs of the down and
    output projections on calibration data; a channel scores ||its column of the output projection||^2 *
    ||its input||^2 (Wanda's weight x activation criterion applied to whole channels), so rare
    high-magnitude channels are kept.
    """
    dims, block = arch.dims[i], arch.blocks[i]
    if importance == "random":
        return {"mlp": torch.rand(dims.intermediate, generator=generator, dtype=torch.float64),
                "kv": torch.rand(dims.kv_heads, generator=generator, dtype=torch.float64),
                "q": torch.rand(dims.heads, generator=generator, dtype=torch.float64)}
    if importance == "activation":
        mlp_score = weight_matrix(block.down).detach().double().pow(2).sum(0) * activations["mlp"]
        q = (weight_matrix(block.o).detach().double().pow(2).sum(0) * activations["attn"]).reshape(dims.heads, -1).sum(1)
        return {"mlp": mlp_score, "kv": q.reshape(dims.kv_heads, -1).sum(1), "q": q}
    g = grads if importance == "taylor" else None
    parts = _structures(arch, i)
    q = _score(g, parts["q"], dims.heads)
    kv = _score(g, parts["kv"], dims.kv_heads) + q.reshape(dims.kv_heads, -1).sum(1)
    return {"mlp": _score(g, parts["mlp"], dims.intermediate), "kv": kv, "q": q}


@torch.no_grad()
def input_energy(model: torch.nn.Module, arch: Arch, windows: torch.Tensor, batch_size: int = 4) -> list[dict]:
    """Per layer, the summed squared inputs of the MLP's down projection and the attention's output projection."""
    stats = [{"mlp": 0.0, "attn": 0.0} for _ in arch.blocks]
    hooks = []

    def hook(i: int, key: str):
        def accumulate(module, args):
            x = args[0].detach().double()
            stats[i][key] = stats[i][key] + x.pow(2).reshape(-1, x.shape[-1]).sum(0)
        return accumulate

    for i, block in enumerate(arch.blocks):
        hooks.append(block.down.register_forward_pre_hook(hook(i, "mlp")))
        hooks.append(block.o.register_forward_pre_hook(hook(i, "attn")))
    was_training = model.training
    try:
        model.eval()
        for start in range(0, windows.shape[0], batch_size):
            model(input_ids=windows[start:start + batch_size], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return stats


def taylor_gradients(model: torch.nn.Module, arch: Arch, windows: torch.Tensor, batch_size: int = 4) -> dict:
    """dL/dw of next-token loss on ``windows`` for the prunable weights (other grads left untouched)."""
    from slimkit.toolkit.training import next_token_loss

    weights = [m.weight for block in arch.blocks for m in block.projections().values()]
    saved = {p: (p.requires_grad, p.grad) for p in model.parameters()}
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for w in weights:
            w.requires_grad_(True)
        model.eval()
        for start in range(0, windows.shape[0], batch_size):
            next_token_loss(model, windows[start:start + batch_size]).backward()
        return {w: w.grad.detach().clone() for w in weights}
    finally:
        for p, (req, grad) in saved.items():
            p.requires_grad_(req)
            p.grad = grad
        model.train(was_training)


# --- surgery ---------------------------------------------------------------------------------------

def _removed(keep: torch.Tensor, total: int) -> list[int]:
    mask = torch.ones(total, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero().flatten().tolist()


def _drop_outputs(module: torch.nn.Module, drop: list[int]) -> None:
    if not drop:
        return
    if not is_conv1d(module):
        tp.prune_linear_out_channels(module, drop)
        return
    keep = torch.tensor([i for i in range(module.nf) if i not in set(drop)], dtype=torch.long)
    module.weight = torch.nn.Parameter(module.weight.data[:, keep].contiguous(), requires_grad=module.weight.requires_grad)
    module.bias = torch.nn.Parameter(module.bias.data[keep].contiguous(), requires_grad=module.bias.requires_grad)
    module.nf = len(keep)


def _drop_inputs(module: torch.nn.Module, drop: list[int]) -> None:
    if not drop:
        return
    if not is_conv1d(module):
        tp.prune_linear_in_channels(module, drop)
        return
    keep = torch.tensor([i for i in range(module.nx) if i not in set(drop)], dtype=torch.long)
    module.weight = torch.nn.Parameter(module.weight.data[keep].contiguous(), requires_grad=module.weight.requires_grad)
    module.nx = len(keep)


@torch.no_grad()
def prune_layer(arch: Arch, i: int, mlp_keep: torch.Tensor | None, kv_keep: torch.Tensor | None,
                q_keep: torch.Tensor | None) -> LayerDims:
    """Remove everything of layer ``i`` not in the keep sets (sorted indices; None keeps all); returns the
    new sizes.

    ``kv_keep`` lists KV heads to keep (their query heads go with them); ``q_keep`` lists query heads
    to keep and must hold the same number per kept KV head.
    """
    block, family, dims = arch.blocks[i], arch.family, arch.dims[i]
    sizes = _sizes(arch, i)
    d = arch.head_dim
    drop_rows: dict[int, tuple[torch.nn.Module, set[int]]] = {}

    def drop(module, rows):
        drop_rows.setdefault(id(module), (module, set()))[1].update(int(r) for r in rows)

    mlp_drop = _removed(mlp_keep, dims.intermediate) if mlp_keep is not None else []
    if mlp_drop:
        for role in (("gate", "up") if family.gated else ("up",)):
            drop(*mlp_rows(block, sizes, role, torch.tensor(mlp_drop)))
    kv_keep = torch.arange(dims.kv_heads) if kv_keep is None else kv_keep
    q_keep = torch.arange(dims.heads) if q_keep is None else q_keep
    kv_drop, q_drop = _removed(kv_keep, dims.kv_heads), _removed(q_keep, dims.heads)
    if kv_drop:
        for role in ("k", "v"):
            drop(*head_rows(block, family, sizes, role, torch.tensor(kv_drop)))
    if q_drop:
        drop(*head_rows(block, family, sizes, "q", torch.tensor(q_drop)))
    for module, rows in drop_rows.values():
        _drop_outputs(module, sorted(rows))
    _drop_inputs(block.down, mlp_drop)
    _drop_inputs(block.o, [h * d + j for h in q_drop for j in range(d)])
    new_sizes = block_sizes(block, family, d)
    new = LayerDims(new_sizes.intermediate, new_sizes.heads, new_sizes.kv_heads)
    for owner, name, value in ((block.mlp, "intermediate_size", new.intermediate),
                               (block.attention, "num_key_value_groups", new.queries_per_kv),
                               (block.attention, "num_heads", new.heads),
                               (block.attention, "num_key_value_heads", new.kv_heads)):
        if hasattr(owner, name):  # attributes some model classes keep (repeat_kv reads num_key_value_groups)
            setattr(owner, name, value)
    arch.dims[i] = new
    return new


def select_keep(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, sorted (ties broken by lower index)."""
    if keep >= len(scores):
        return torch.arange(len(scores))
    order = torch.argsort(-scores, stable=True)
    return order[:keep].sort().values


def query_keep(q_scores: torch.Tensor, kv_keep: torch.Tensor, queries_per_kv: int, keep_per_kv: int) -> torch.Tensor:
    """Query heads to keep: ``keep_per_kv`` best of each kept KV head's own query heads."""
    kept = []
    for g in kv_keep.tolist():
        local = select_keep(q_scores[g * queries_per_kv:(g + 1) * queries_per_kv], keep_per_kv)
        kept.append(local + g * queries_per_kv)
    return torch.cat(kept)
