"""Test helpers for slimkit and its plugins: a tiny pipeline state and the shared plugin contract."""

from __future__ import annotations

import copy

import torch

from ..data import build_splits
from ..models import tiny_model, tiny_tokenizer
from ..state import PipelineState

TINY_DATA = dict(seq_len=64, train_tokens=2048, calibration_samples=4, eval_tokens=512)


def tiny_state(seed: int = 0, **model_kwargs) -> PipelineState:
    """A :class:`PipelineState` over the tiny random-init Llama and short Wikipedia slices."""
    torch.manual_seed(seed)
    model = tiny_model(seed, **model_kwargs)
    tokenizer = tiny_tokenizer()
    data = build_splits(tokenizer, **TINY_DATA)
    reference = copy.deepcopy(model).requires_grad_(False)
    return PipelineState(model, tokenizer, data, reference, settings={"seed": seed}, seed=seed)


from .contract import StageContract  # noqa: E402

__all__ = ["StageContract", "TINY_DATA", "tiny_state"]
