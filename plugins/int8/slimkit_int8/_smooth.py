"""SmoothQuant equalization for every family in :mod:`slimkit.toolkit.families`, and per-module int8
error estimates.

For a Linear whose input channel ``j`` carries outliers, ``y = x W^T = (x / s) (W * s)^T`` for any
positive per-channel ``s``; choosing ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` moves the
outliers from the activations (quantized per token, at run time) into the weights (quantized per
channel, once). The ``1/s`` is folded into whatever produces ``x``, so the float model computes the
same function. The family table says where the pieces are; the groups are the same for every family:

* the attention norm (Llama ``input_layernorm``, OPT ``self_attn_layer_norm``, GPT-2 ``ln_1``) -> the
  q/k/v columns (separate projections or one fused ``qkv_proj`` / ``c_attn`` / ``query_key_value``);
* the MLP norm (``post_attention_layernorm``, Gemma's ``pre_feedforward_layernorm``, OPT
  ``final_layer_norm``, GPT-2 ``ln_2``) -> the gate/up (or ``fc1``, ``c_fc``, fused ``gate_up_proj``) columns;
* the V rows -> the output projection's columns (attention is linear in V; with grouped-query
  attention the scale of an output column is shared by all query heads reading the same KV head);
* the up rows -> the down projection's columns, when ``down`` reads ``act(gate) * up`` (linear in ``up``)
  or ``relu(up)`` (OPT: ``relu(x / s) = relu(x) / s``); GELU MLPs (GPT-2, GPT-NeoX) skip this group.

Norm folds respect the norm kind: RMSNorm ``w``, Gemma's ``1 + w``, LayerNorm ``w`` and ``b`` together.
Families whose norms come after the sublayers (OPT with ``do_layer_norm_before=False``) skip the norm
groups. Conv1D (GPT-2) weights are handled through their ``[out, in]`` view.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Mapping, Optional

import torch

from slimkit.toolkit.families import (Family, activation, block_sizes, config_sizes, decoder_blocks, family_of,
                                      head_rows, mlp_rows, pre_norm)
from slimkit.toolkit.families import HOMOGENEOUS_ACTIVATIONS
from slimkit.toolkit.modules import weight_matrix

from ._kernels import simulated_int8

#: the config key that chose smoothing (named in errors)
KEY = "quantizer.smooth"


def _norm_fold(norm: torch.nn.Module, s: torch.Tensor, kind: str) -> None:
    """Divide the norm's output by ``s`` per channel."""
    w = norm.weight.data
    if kind == "rms_plus_one":  # Gemma: x * (1 + w)
        w.copy_((1.0 + w) / s - 1.0)
    else:
        w.div_(s)
    if kind == "layer" and getattr(norm, "bias", None) is not None:
        norm.bias.data.div_(s)


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


def check_model(config: Any) -> Family:
    """The family description smoothing needs for a model config, or a :class:`ConfigError` naming the model
    type, the backend and the supported families (callable on an ``AutoConfig``, before any weights load)."""
    return family_of(config, "int8", KEY, True, instead="false (int8 without smoothing), or ")


def _pairs(model: torch.nn.Module) -> list[dict[str, Any]]:
    """The smoothing groups of every decoder block, from the family table."""
    family = check_model(model.config)
    config = model.config
    head_dim = config_sizes(config, family).head_dim
    names = {id(m): n for n, m in model.named_modules()}
    norms_feed = pre_norm(config, family)
    ungated_ok = activation(config, family) in HOMOGENEOUS_ACTIVATIONS
    groups = []
    for block in decoder_blocks(model, family, KEY, True):
        sizes = block_sizes(block, family, head_dim)
        attn_in = [block.qkv] if block.qkv is not None else [block.q, block.k, block.v]
        if norms_feed and getattr(block.attn_norm, "weight", None) is not None:
            groups.append({"kind": "norm", "norm": block.attn_norm, "norm_kind": family.norm_kind,
                           "consumers": [names[id(m)] for m in attn_in]})
        if not hasattr(block.attention, "v_norm"):  # a norm on V would make the V->O fold invalid
            v, rows = head_rows(block, family, sizes, "v", torch.arange(sizes.kv_heads))
            groups.append({"kind": "v_o", "producer": names[id(v)], "rows": rows, "sizes": sizes,
                           "consumers": [names[id(block.o)]]})
        mlp_in = [m for m in (block.gate_up, block.gate, block.up) if m is not None]
        if norms_feed and getattr(block.mlp_norm, "weight", None) is not None:
            groups.append({"kind": "norm", "norm": block.mlp_norm, "norm_kind": family.norm_kind,
                           "consumers": [names[id(m)] for m in mlp_in]})
        if family.gated or ungated_ok:
            up, rows = mlp_rows(block, sizes, "up", torch.arange(sizes.intermediate))
            groups.append({"kind": "up_down", "producer": names[id(up)], "rows": rows,
                           "consumers": [names[id(block.down)]]})
    return groups


def _scales(act_max: torch.Tensor, weights: Iterable[torch.Tensor], alpha: float) -> torch.Tensor:
    """Per input channel ``max|X|^alpha / max|W|^(1-alpha)`` over ``weights`` (``[out, in]`` each)."""
    w_max = torch.stack([w.detach().abs().amax(0) for w in weights]).amax(0).float()
    s = act_max.clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1 - alpha)
    return s.clamp(1e-4, 1e4)


def _divide_rows(module: torch.nn.Module, rows: torch.Tensor, s: torch.Tensor) -> None:
    """Divide output rows ``rows`` of ``module`` (weight and bias) by ``s``."""
    w = weight_matrix(module)
    w[rows] = w[rows] / s[:, None].to(w.dtype)
    if module.bias is not None:
        module.bias.data[rows] = module.bias.data[rows] / s.to(module.bias.dtype)


def smooth(model: torch.nn.Module, windows: torch.Tensor, alpha: float,
           quantized: Optional[set[str]] = None) -> dict[str, Any]:
    """Fold SmoothQuant scales into ``model`` in place (float, function-preserving); return metrics.

    Only groups with at least one consumer in ``quantized`` (all when ``None``) are smoothed. A model
    whose family :mod:`slimkit.toolkit.families` does not describe is a :class:`ConfigError`.
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
            weights = [weight_matrix(c) for c in consumers]
            act = stats[g["consumers"][0]]
            ratios.append(float(act.max() / act.median().clamp_min(1e-8)))
            if g["kind"] == "v_o":
                sizes, o = g["sizes"], weights[0]
                n_kv, per_kv, d = sizes.kv_heads, sizes.heads // sizes.kv_heads, sizes.head_dim
                a = act.view(n_kv, per_kv, d).amax(1)
                w = o.abs().amax(0).float().view(n_kv, per_kv, d).amax(1)
                s_kv = (a.clamp_min(1e-5).pow(alpha) / w.clamp_min(1e-5).pow(1 - alpha)).clamp(1e-4, 1e4).reshape(-1)
                s_o = s_kv.view(n_kv, 1, d).expand(n_kv, per_kv, d).reshape(-1)
                _divide_rows(modules[g["producer"]], g["rows"], s_kv)
                o.mul_(s_o.to(o.dtype))
                continue
            s = _scales(act, weights, alpha)
            if g["kind"] == "norm":
                _norm_fold(g["norm"], s, g["norm_kind"])
            else:  # up_down: scale the producer's output rows
                _divide_rows(modules[g["producer"]], g["rows"], s)
            for w in weights:
                w.mul_(s.to(w.dtype))
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
            approx = simulated_int8(args[0].detach(), weight_matrix(module))
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
