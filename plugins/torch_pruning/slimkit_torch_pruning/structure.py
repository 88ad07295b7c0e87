"""The mechanics of structured pruning on Llama-style decoders.

Finds the prunable structures (MLP channels, attention heads grouped with their KV head), scores
them, removes the lowest-scoring ones with Torch-Pruning's low-level pruning functions
(``tp.prune_linear_out_channels`` / ``tp.prune_linear_in_channels``) and patches the config so a
stock ``from_pretrained`` rebuilds the smaller model.

Torch-Pruning's dependency graph is not used: on transformers 5.24 its ``MetaPruner`` did not finish
tracing a 4-layer tiny Llama within 300 s, and it has no notion of query heads sharing a KV head.
The coupled index sets here are few and fixed by the architecture, so they are written out.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import torch
import torch_pruning as tp

from slimkit.core.errors import ConfigError

MLP_NAMES = ("gate_proj", "up_proj", "down_proj")
ATTN_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")
SUPPORTED = ("a decoder-only causal LM with `model.model.layers[i].self_attn.{q,k,v,o}_proj` and "
             "`model.model.layers[i].mlp.{gate,up,down}_proj` as torch.nn.Linear and a config with "
             "num_attention_heads, num_key_value_heads and an integer intermediate_size "
             "(Llama/SmolLM2, Mistral, Qwen2, Gemma-3 and alike)")


class UnsupportedArchitectureError(ConfigError):
    """The model is not an architecture this pruner understands; the model was not changed."""

    def __init__(self, model: torch.nn.Module, why: str):
        super().__init__("pruner.backend", f"torch_pruning on {type(model).__name__}", SUPPORTED, why)


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
    """The decoder layers of a supported model and their current sizes."""

    layers: torch.nn.ModuleList
    head_dim: int
    dims: list[LayerDims]


def inspect(model: torch.nn.Module) -> Arch:
    """Check ``model`` is a supported architecture and read its per-layer sizes (changes nothing)."""
    config = getattr(model, "config", None)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if config is None or not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise UnsupportedArchitectureError(model, "it has no `model.layers` ModuleList of decoder layers")
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size", "hidden_size"):
        if not isinstance(getattr(config, key, None), int):
            raise UnsupportedArchitectureError(model, f"its config has no integer {key}")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dims = []
    for i, layer in enumerate(layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        for owner, names, what in ((attn, ATTN_NAMES, "self_attn"), (mlp, MLP_NAMES, "mlp")):
            for name in names:
                module = getattr(owner, name, None)
                if type(module) is not torch.nn.Linear:  # subclasses (quantized/LoRA linears) are not safe to slice
                    found = "missing" if module is None else type(module).__name__
                    raise UnsupportedArchitectureError(model, f"layer {i}: {what}.{name} is {found}, not torch.nn.Linear")
        q, k, v, o = (getattr(attn, n) for n in ATTN_NAMES)
        gate, up, down = (getattr(mlp, n) for n in MLP_NAMES)
        if q.out_features % head_dim or k.out_features % head_dim or k.out_features != v.out_features:
            raise UnsupportedArchitectureError(model, f"layer {i}: q/k/v widths are not whole heads of head_dim {head_dim}")
        heads, kv_heads = q.out_features // head_dim, k.out_features // head_dim
        if heads % kv_heads or o.in_features != q.out_features:
            raise UnsupportedArchitectureError(model, f"layer {i}: {heads} query heads do not group over {kv_heads} KV heads")
        if not (gate.out_features == up.out_features == down.in_features):
            raise UnsupportedArchitectureError(model, f"layer {i}: gate/up/down widths disagree")
        dims.append(LayerDims(gate.out_features, heads, kv_heads))
    return Arch(layers, head_dim, dims)


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


# --- importance ------------------------------------------------------------------------------------

def _score(grads: dict[torch.Tensor, torch.Tensor] | None, slices: Sequence[tuple[torch.Tensor, int]], n: int) -> torch.Tensor:
    """Per-structure score summed over coupled weight slices.

    ``slices`` pairs a weight with the dim along which its rows/columns map onto structures (each
    structure owns ``size // n`` consecutive entries). l2: sum of squares (the group criterion of
    ``tp.importance.GroupMagnitudeImportance(p=2)``); taylor: sum of |w * dL/dw| (first-order Taylor,
    as ``tp.importance.GroupTaylorImportance``).
    """
    total = torch.zeros(n, dtype=torch.float64)
    for weight, dim in slices:
        w = weight.detach().float()
        value = w.pow(2) if grads is None else (w * grads[weight].float()).abs()
        value = value.transpose(0, dim) if dim else value
        total += value.reshape(n, -1).sum(1).double()
    return total


def layer_scores(layer: torch.nn.Module, dims: LayerDims, head_dim: int, importance: str,
                 grads: dict | None, generator: torch.Generator,
                 activations: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Scores of one layer's MLP channels, KV groups and query heads (higher = more important).

    ``activations`` (importance 'activation') holds this layer's summed squared inputs of
    ``down_proj`` and ``o_proj`` on calibration data; a channel scores
    ||its column of the output projection||^2 * ||its input||^2 (Wanda's weight x activation
    criterion applied to whole channels), so rare high-magnitude channels are kept.
    """
    attn, mlp = layer.self_attn, layer.mlp
    if importance == "random":
        return {"mlp": torch.rand(dims.intermediate, generator=generator, dtype=torch.float64),
                "kv": torch.rand(dims.kv_heads, generator=generator, dtype=torch.float64),
                "q": torch.rand(dims.heads, generator=generator, dtype=torch.float64)}
    if importance == "activation":
        mlp_score = mlp.down_proj.weight.detach().double().pow(2).sum(0) * activations["mlp"]
        q = (attn.o_proj.weight.detach().double().pow(2).sum(0) * activations["attn"]).reshape(dims.heads, -1).sum(1)
        return {"mlp": mlp_score, "kv": q.reshape(dims.kv_heads, -1).sum(1), "q": q}
    g = grads if importance == "taylor" else None
    mlp_slices = [(mlp.gate_proj.weight, 0), (mlp.up_proj.weight, 0), (mlp.down_proj.weight, 1)]
    q_slices = [(attn.q_proj.weight, 0), (attn.o_proj.weight, 1)]
    kv_slices = [(attn.k_proj.weight, 0), (attn.v_proj.weight, 0)]
    q = _score(g, q_slices, dims.heads)
    kv = _score(g, kv_slices, dims.kv_heads) + q.reshape(dims.kv_heads, -1).sum(1)
    return {"mlp": _score(g, mlp_slices, dims.intermediate), "kv": kv, "q": q}


@torch.no_grad()
def input_energy(model: torch.nn.Module, arch: Arch, windows: torch.Tensor, batch_size: int = 4) -> list[dict]:
    """Per layer, the summed squared inputs of ``mlp.down_proj`` and ``self_attn.o_proj`` over ``windows``."""
    stats = [{"mlp": 0.0, "attn": 0.0} for _ in arch.layers]
    hooks = []

    def hook(i: int, key: str):
        def accumulate(module, args):
            x = args[0].detach().double()
            stats[i][key] = stats[i][key] + x.pow(2).reshape(-1, x.shape[-1]).sum(0)
        return accumulate

    for i, layer in enumerate(arch.layers):
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(hook(i, "mlp")))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(hook(i, "attn")))
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

    weights = [getattr(owner, n).weight for layer in arch.layers
               for owner, names in ((layer.self_attn, ATTN_NAMES), (layer.mlp, MLP_NAMES)) for n in names]
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


def _head_channels(heads: Iterable[int], head_dim: int) -> list[int]:
    return [h * head_dim + d for h in heads for d in range(head_dim)]


@torch.no_grad()
def prune_layer(layer: torch.nn.Module, dims: LayerDims, head_dim: int, mlp_keep: torch.Tensor | None,
                kv_keep: torch.Tensor | None, q_keep: torch.Tensor | None) -> LayerDims:
    """Remove everything not in the keep sets (sorted indices; None keeps all); returns the new sizes.

    ``kv_keep`` lists KV heads to keep (their query heads go with them); ``q_keep`` lists query heads
    to keep and must hold the same number per kept KV head.
    """
    attn, mlp = layer.self_attn, layer.mlp
    if mlp_keep is not None and len(mlp_keep) < dims.intermediate:
        drop = _removed(mlp_keep, dims.intermediate)
        tp.prune_linear_out_channels(mlp.gate_proj, drop)
        tp.prune_linear_out_channels(mlp.up_proj, drop)
        tp.prune_linear_in_channels(mlp.down_proj, drop)
    kv_keep = torch.arange(dims.kv_heads) if kv_keep is None else kv_keep
    q_keep = torch.arange(dims.heads) if q_keep is None else q_keep
    if len(kv_keep) < dims.kv_heads or len(q_keep) < dims.heads:
        drop_kv = _head_channels(_removed(kv_keep, dims.kv_heads), head_dim)
        drop_q = _head_channels(_removed(q_keep, dims.heads), head_dim)
        if drop_kv:
            tp.prune_linear_out_channels(attn.k_proj, drop_kv)
            tp.prune_linear_out_channels(attn.v_proj, drop_kv)
        if drop_q:
            tp.prune_linear_out_channels(attn.q_proj, drop_q)
            tp.prune_linear_in_channels(attn.o_proj, drop_q)
    new = LayerDims(mlp.gate_proj.out_features, attn.q_proj.out_features // head_dim,
                    attn.k_proj.out_features // head_dim)
    for owner, name, value in ((mlp, "intermediate_size", new.intermediate),
                               (attn, "num_key_value_groups", new.queries_per_kv),
                               (attn, "num_heads", new.heads), (attn, "num_key_value_heads", new.kv_heads)):
        if hasattr(owner, name):  # attributes some model classes keep (repeat_kv reads num_key_value_groups)
            setattr(owner, name, value)
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
