"""Tiny pipeline states for fast tests: a random-init Llama on short Wikipedia or random-token windows."""

from __future__ import annotations

import copy
import functools

import torch

from slimkit.core.state import PipelineState
from slimkit.data import DataSplits, build_splits
from slimkit.models import tiny_model, tiny_tokenizer

TINY_DATA = dict(seq_len=64, train_tokens=2048, calibration_samples=4, eval_tokens=512)


def tiny_state(seed: int = 0, **model_kwargs) -> PipelineState:
    """A :class:`PipelineState` over the tiny random-init Llama and short Wikipedia slices."""
    torch.manual_seed(seed)
    model = tiny_model(seed, **model_kwargs)
    tokenizer = tiny_tokenizer()
    data = build_splits(tokenizer, **TINY_DATA)
    reference = copy.deepcopy(model).requires_grad_(False)
    return PipelineState(model, tokenizer, data, reference, settings={"seed": seed}, seed=seed)


@functools.lru_cache(maxsize=1)
def _random_token_state() -> PipelineState:
    g = torch.Generator().manual_seed(0)
    data = DataSplits(train=torch.randint(0, 512, (16, 64), generator=g), eval=torch.randint(0, 512, (4, 64), generator=g),
                      seq_len=64, calibration_samples=4, info={"source": "random token ids"})
    model = tiny_model(0)
    return PipelineState(model, tiny_tokenizer(), data, copy.deepcopy(model).requires_grad_(False))


def random_token_state() -> PipelineState:
    """A fresh copy of the tiny model on random token windows: no corpus to tokenize (tiny_state() takes
    20-50 s on a busy machine), for tests that only need shapes and calibration windows."""
    return copy.deepcopy(_random_token_state())
