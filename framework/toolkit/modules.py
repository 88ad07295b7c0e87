"""Choosing modules by glob pattern, the same way for every backend, and treating ``nn.Linear`` and
transformers' ``Conv1D`` (GPT-2 style, weight stored transposed as ``[in, out]``) alike."""

from __future__ import annotations

import fnmatch
import functools
from typing import Iterable, Optional, Sequence

import torch

from slimkit.core.errors import ConfigError


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def select_modules(model: torch.nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
                   types: Optional[tuple[type, ...]] = None, prefix: str = "") -> dict[str, torch.nn.Module]:
    """Modules of ``types`` (default: :func:`linear_types`, i.e. ``Linear`` and ``Conv1D``) whose qualified name matches an ``include`` glob and no ``exclude`` glob.

    ``prefix`` (e.g. ``"quantizer"``) names the config keys in errors. A pattern that matches no module of those types is an error naming the pattern (it is almost
    always a typo), as is a selection that ends up empty.
    """
    dot = f"{prefix}." if prefix else ""
    types = linear_types() if types is None else types
    candidates = {name: m for name, m in model.named_modules() if isinstance(m, types)}
    for field, patterns in ((f"{dot}include", include), (f"{dot}exclude", exclude)):
        for pattern in patterns:
            if not any(_matches(name, pattern) for name in candidates):
                examples = ", ".join(list(candidates)[:3])
                raise ConfigError(field, pattern, f"a glob matching at least one {'/'.join(t.__name__ for t in types)} "
                                  f"module name (e.g. {examples})", "it matches none")
    chosen = {name: m for name, m in candidates.items()
              if any(_matches(name, p) for p in include) and not any(_matches(name, p) for p in exclude)}
    if not chosen:
        raise ConfigError(f"{dot}include", list(include), "patterns that leave at least one module after exclusions")
    return chosen


def unique_parameters(modules: Iterable[torch.nn.Module]) -> int:
    """Parameter count of ``modules``, shared tensors counted once."""
    seen = {id(p): p.numel() for m in modules for p in m.parameters()}
    return sum(seen.values())

# --- Linear and Conv1D alike ---------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _conv1d_type() -> Optional[type]:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return None
    return Conv1D


def linear_types() -> tuple[type, ...]:
    """The module types backends treat as linear layers: ``torch.nn.Linear`` and transformers' ``Conv1D``
    (GPT-2 style, weight stored transposed as ``[in, out]``)."""
    conv1d = _conv1d_type()
    return (torch.nn.Linear,) if conv1d is None else (torch.nn.Linear, conv1d)


def is_conv1d(module: torch.nn.Module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (``y = x @ W + b`` with ``W`` of shape ``[in, out]``)."""
    conv1d = _conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def weight_matrix(module: torch.nn.Module, tensor: torch.Tensor | None = None) -> torch.Tensor:
    """``module``'s weight (or ``tensor`` shaped like it, e.g. its gradient) as an ``[out, in]`` view: the weight
    itself for ``Linear``, its transpose for ``Conv1D``. In-place edits of the view change the module."""
    t = module.weight if tensor is None else tensor
    return t.t() if is_conv1d(module) else t


def in_features(module: torch.nn.Module) -> int:
    return int(module.nx if is_conv1d(module) else module.in_features)


def out_features(module: torch.nn.Module) -> int:
    return int(module.nf if is_conv1d(module) else module.out_features)


def as_linear(module: torch.nn.Module) -> torch.nn.Module:
    """An ``nn.Linear`` computing exactly what ``module`` computes (a ``Conv1D``'s weight transposed into a new
    tensor); ``module`` itself when it already is one."""
    if not is_conv1d(module):
        return module
    linear = torch.nn.Linear(module.nx, module.nf, bias=module.bias is not None, device="meta",
                             dtype=module.weight.dtype)
    linear.weight = torch.nn.Parameter(module.weight.detach().t().contiguous(), requires_grad=module.weight.requires_grad)
    if module.bias is not None:
        linear.bias = torch.nn.Parameter(module.bias.detach().clone(), requires_grad=module.bias.requires_grad)
    return linear


def as_conv1d(linear: torch.nn.Module) -> torch.nn.Module:
    """The ``Conv1D`` computing what ``linear`` computes (inverse of :func:`as_linear`)."""
    from transformers.pytorch_utils import Conv1D

    weight = linear.weight.detach()
    conv = Conv1D(linear.out_features, linear.in_features)
    conv.weight = torch.nn.Parameter(weight.t().contiguous(), requires_grad=linear.weight.requires_grad)
    bias = linear.bias.detach().clone() if linear.bias is not None else torch.zeros(linear.out_features, dtype=weight.dtype)
    conv.bias = torch.nn.Parameter(bias.to(weight.device), requires_grad=linear.weight.requires_grad)
    return conv


def conv1d_to_linear(model: torch.nn.Module, names: Iterable[str] | None = None) -> list[str]:
    """Replace ``Conv1D`` modules (all, or those in ``names``) by equivalent ``nn.Linear`` in place; return their
    names. For backends whose kernels only know ``nn.Linear`` (optimum-quanto skips ``Conv1D``)."""
    wanted = None if names is None else set(names)
    swapped = []
    for name, module in list(model.named_modules()):
        if is_conv1d(module) and (wanted is None or name in wanted):
            model.set_submodule(name, as_linear(module))
            swapped.append(name)
    return swapped
