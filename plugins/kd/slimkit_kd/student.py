"""DistilBERT-style students: a copy of a model with some decoder layers dropped."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from slimkit import ConfigError


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The ``ModuleList`` of decoder layers (the one whose length is ``config.num_hidden_layers``)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n:
            return name, module
    raise ConfigError("distiller.student_layers", "…", "a model whose decoder layers form one ModuleList of "
                      "config.num_hidden_layers entries", f"{type(model).__name__} has none")


def resolve_layers(spec: Any, n_layers: int) -> list[int]:
    """Turn ``'every_other'`` or an explicit index list into sorted layer indices to keep."""
    if spec == "every_other":
        return list(range(0, n_layers, 2))
    keep = [int(i) for i in spec]
    bad = [i for i in keep if not 0 <= i < n_layers]
    if bad:
        raise ConfigError("distiller.student_layers", list(spec), f"indices in [0, {n_layers - 1}] (the model has "
                          f"{n_layers} decoder layers)", f"{bad} out of range")
    return keep


def drop_layers(model: torch.nn.Module, keep: Sequence[int]) -> torch.nn.Module:
    """A deep copy of ``model`` keeping only decoder layers ``keep`` (weights copied).

    The config is patched so ``save_pretrained`` / ``from_pretrained`` round-trip: ``num_hidden_layers``
    and every per-layer list (e.g. ``layer_types``) are cut to the kept layers, and each kept
    layer's ``layer_idx`` (used by the KV cache) is renumbered.
    """
    name, layers = decoder_layers(model)
    n_old = len(layers)
    student = copy.deepcopy(model)
    _, old_layers = decoder_layers(student)
    kept = torch.nn.ModuleList([old_layers[i] for i in keep])
    student.set_submodule(name, kept)
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    config = student.config
    for key, value in list(vars(config).items()):
        if key.startswith("_"):
            continue
        if isinstance(value, (list, tuple)) and len(value) == n_old and key != "architectures":
            setattr(config, key, type(value)(value[i] for i in keep))
    config.num_hidden_layers = len(keep)
    return student
