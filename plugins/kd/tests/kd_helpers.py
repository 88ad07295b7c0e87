"""Shared helpers for the kd tests: the tiny state is built once per process (tokenizing the
Wikipedia sample dominates its cost) and copied for each test."""

from __future__ import annotations

import copy
import functools

import torch


@functools.lru_cache(maxsize=None)
def _base_state(seed: int = 0):
    from slimkit.testing import tiny_state

    torch.set_num_threads(1)
    return tiny_state(seed)


def fresh_state(seed: int = 0):
    """A tiny PipelineState with its own copies of the model and reference (data and tokenizer shared)."""
    base = _base_state(0)
    state = copy.copy(base)
    if seed == 0:
        state.model = copy.deepcopy(base.model)
    else:
        from slimkit.models import tiny_model

        state.model = tiny_model(seed)
    state.reference = copy.deepcopy(state.model).requires_grad_(False)
    state.settings = {"seed": seed}
    state.applied = []
    return state
