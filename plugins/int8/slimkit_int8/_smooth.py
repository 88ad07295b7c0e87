"""SmoothQuant equalization for Llama/Gemma-style decoders, and per-module int8 error estimates.

For a Linear whose input channel ``j`` carries outliers, ``y = x W^T = (x / s) (W * s)^T`` for any
positive per-channel ``s``; choosing ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` moves the
outliers from the activations (quantized per token, at run time) into the weights (quantized per
channel, once). The ``1/s`` is folded into whatever produces ``x``, so the float model computes the
same function:

* ``input_layernorm`` (RMSNorm weight) -> ``q_proj``/``k_proj``/``v_proj`` columns;
* the norm before the MLP (``post_attention_layernorm``, or Gemma's ``pre_feedforward_layernorm``)
  -> ``gate_proj``/``up_proj`` columns;
* ``v_proj`` rows -> ``o_proj`` columns (attention is linear in V; with grouped-query attention the
  scale of an ``o_proj`` column is shared by all query heads reading the same KV head);
* ``up_proj`` rows -> ``down_proj`` columns (``down`` reads ``act(gate) * up``, linear in ``up``).

Gemma's RMSNorm multiplies by ``1 + weight``; the fold respects that.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Mapping, Optional

import torch

from slimkit.core.errors import ConfigError

from ._kernels import simulated_int8


def _norm_scale(norm: torch.nn.Module) -> tuple[torch.Tensor, bool]:
    """The norm's effective per-channel multiplier and whether it is Gemma-style (``1 + weight``)."""
    gemma = type(norm).__name__.startswith("Gemma")
    w = norm.weight.detach()
    return (1.0 + w if gemma else w), gemma


def _set_norm_scale(norm: torch.nn.Module, multiplier: torch.Tensor, gemma: bool) -> None:
    norm.weight.data.copy_(multiplier - 1.0 if gemma else multiplier)


@contextlib.contextmanager
def _input_absmax(modules: Mapping[str, torch.nn.Module], out: dict[str, torch.Tensor]) -> Iterator[None]:
    """Record the running max |input| per input channel of each module into ``out``."""
    def hook(name):
        def record(_module, args):
            x = args[0].detach()
            m = x.reshape(-1, x.shape[-1]).abs().amax(0).float()
            out[name] = m if name not in out else torch.maximum(out[name], m)
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _run(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4) -> None:
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            model(input_ids=windows[start:start + batch_size], use_cache=False)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder blocks of a Llama/Gemma-style model (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError("quantizer.smooth", True, "false for this model",
                          f"{type(model).__name__} has no model.layers decoder blocks to smooth")
    return list(layers)


def _pairs(model: torch.nn.Module) -> list[dict[str, Any]]:
    """The smoothing groups of every decoder block: (kind, producer, consumer names)."""
    names = {id(m): n for n, m in model.named_modules()}
    groups = []
    for layer in decoder_layers(model):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is not None and all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            if getattr(layer, "input_layernorm", None) is not None:
                groups.append({"kind": "norm", "norm": layer.input_layernorm,
                               "consumers": [names[id(getattr(attn, p))] for p in ("q_proj", "k_proj", "v_proj")]})
            if not hasattr(attn, "v_norm"):  # a norm on V would make the V->O fold invalid
                groups.append({"kind": "v_o", "attn": attn, "producer": names[id(attn.v_proj)],
                               "consumers": [names[id(attn.o_proj)]]})
        if mlp is not None and all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")):
            norm = getattr(layer, "pre_feedforward_layernorm", None) or getattr(layer, "post_attention_layernorm", None)
            if norm is not None and getattr(layer, "pre_feedforward_layernorm", None) is None and \
                    hasattr(layer, "post_feedforward_layernorm"):
                norm = None  # unknown norm placement: do not guess
            if norm is not None:
                groups.append({"kind": "norm", "norm": norm,
                               "consumers": [names[id(mlp.gate_proj)], names[id(mlp.up_proj)]]})
            groups.append({"kind": "up_down", "producer": names[id(mlp.up_proj)],
                           "consumers": [names[id(mlp.down_proj)]]})
    return groups


def _scales(act_max: torch.Tensor, weights: Iterable[torch.Tensor], alpha: float) -> torch.Tensor:
    w_max = torch.stack([w.detach().abs().amax(0) for w in weights]).amax(0).float()
    s = act_max.clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1 - alpha)
    return s.clamp(1e-4, 1e4)


def smooth(model: torch.nn.Module, windows: torch.Tensor, alpha: float,
           quantized: Optional[set[str]] = None) -> dict[str, Any]:
    """Fold SmoothQuant scales into ``model`` in place (float, function-preserving); return metrics.

    Only groups with at least one consumer in ``quantized`` (all when ``None``) are smoothed.
    """
    groups = _pairs(model)
    if quantized is not None:
        groups = [g for g in groups if any(c in quantized for c in g["consumers"])]
    modules = dict(model.named_modules())
    first = {g["consumers"][0]: modules[g["consumers"][0]] for g in groups}
    stats: dict[str, torch.Tensor] = {}
    model.eval()
    with _input_absmax(first, stats):
        _run(model, windows)
    ratios = []
    with torch.no_grad():
        for g in groups:
            consumers = [modules[c] for c in g["consumers"]]
            act = stats[g["consumers"][0]]
            ratios.append(float(act.max() / act.median().clamp_min(1e-8)))
            if g["kind"] == "v_o":
                attn, v, o = g["attn"], modules[g["producer"]], consumers[0]
                head_dim = attn.head_dim
                n_kv = v.out_features // head_dim
                groups_per_kv = o.in_features // v.out_features
                a = act.view(n_kv, groups_per_kv, head_dim).amax(1)
                w = o.weight.abs().amax(0).float().view(n_kv, groups_per_kv, head_dim).amax(1)
                s_kv = (a.clamp_min(1e-5).pow(alpha) / w.clamp_min(1e-5).pow(1 - alpha)).clamp(1e-4, 1e4).reshape(-1)
                s_o = s_kv.view(n_kv, 1, head_dim).expand(n_kv, groups_per_kv, head_dim).reshape(-1)
                v.weight.div_(s_kv[:, None])
                if v.bias is not None:
                    v.bias.div_(s_kv)
                o.weight.mul_(s_o)
                continue
            s = _scales(act, [c.weight for c in consumers], alpha)
            if g["kind"] == "norm":
                mult, gemma = _norm_scale(g["norm"])
                _set_norm_scale(g["norm"], mult / s, gemma)
            else:  # up_down: scale the producer's output rows
                up = modules[g["producer"]]
                up.weight.div_(s[:, None])
                if up.bias is not None:
                    up.bias.div_(s)
            for c in consumers:
                c.weight.mul_(s)
    return {"smoothed_groups": len(groups),
            "activation_outlier_ratio_max": max(ratios) if ratios else None,
            "activation_outlier_ratio_median": sorted(ratios)[len(ratios) // 2] if ratios else None}


def int8_errors(model: torch.nn.Module, names: Iterable[str], windows: torch.Tensor) -> dict[str, float]:
    """Relative output error ||int8(x) int8(W) - x W|| / ||x W|| of each named Linear on ``windows``
    (int8 per-channel weights x int8 per-token activations, simulated in float)."""
    modules = dict(model.named_modules())
    err: dict[str, list[float]] = {n: [0.0, 0.0] for n in names}

    def hook(name):
        def record(module, args, output):
            ref = output.detach().reshape(-1, output.shape[-1]).float()
            if module.bias is not None:
                ref = ref - module.bias.float()
            approx = simulated_int8(args[0].detach(), module.weight)
            err[name][0] += float((approx - ref).pow(2).sum())
            err[name][1] += float(ref.pow(2).sum())
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in err]
    try:
        _run(model, windows)
    finally:
        for h in handles:
            h.remove()
    return {n: (e / d) ** 0.5 if d > 0 else 0.0 for n, (e, d) in err.items()}
