"""Choosing modules by glob pattern, the same way for every backend."""

from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence

import torch

from slimkit.core.errors import ConfigError


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def select_modules(model: torch.nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
                   types: tuple[type, ...] = (torch.nn.Linear,), prefix: str = "") -> dict[str, torch.nn.Module]:
    """Modules of ``types`` whose qualified name matches an ``include`` glob and no ``exclude`` glob.

    ``prefix`` (e.g. ``"quantizer"``) names the config keys in errors. A pattern that matches no module of those types is an error naming the pattern (it is almost
    always a typo), as is a selection that ends up empty.
    """
    dot = f"{prefix}." if prefix else ""
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
