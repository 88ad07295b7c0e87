"""Latency with pinned threads: the models under comparison alternated in one process, medians."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Iterator, Mapping

import torch
from tqdm.auto import tqdm


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (no change when ``None``)."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _prefill_ms(model: torch.nn.Module, prompt: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model(input_ids=prompt, use_cache=False)
    return (time.perf_counter() - start) * 1000


def _decode_tokens_per_s(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Greedy decode of exactly ``new_tokens`` tokens with the KV cache; prefill excluded."""
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=token, cache=cache, use_cache=True)
            cache, token = out.cache, out.logits[:, -1:].argmax(-1)
        return new_tokens / (time.perf_counter() - start)


def latency(models: Mapping[str, torch.nn.Module], prompt: torch.Tensor, threads: int = 1, repeats: int = 5,
            decode_tokens: int = 32, progress: bool = True) -> dict[str, dict[str, float]]:
    """Median prefill ms and decode tokens/s for each model, timed alternately in this process.

    Every round runs each model once in turn, so drift in machine load hits all of them alike.
    """
    results: dict[str, dict[str, list[float]]] = {name: {"prefill_ms": [], "decode_tokens_per_s": []} for name in models}
    with pinned_threads(threads):
        for model in models.values():  # warm-up: allocator, kernels, lazy init
            _prefill_ms(model, prompt)
            _decode_tokens_per_s(model, prompt, 2)
        for _ in tqdm(range(repeats), desc=f"latency ({threads} thread{'s' if threads != 1 else ''})", leave=False,
                      disable=not progress):
            for name, model in models.items():
                results[name]["prefill_ms"].append(_prefill_ms(model, prompt))
                results[name]["decode_tokens_per_s"].append(_decode_tokens_per_s(model, prompt, decode_tokens))
    return {name: {key: statistics.median(vals) for key, vals in r.items()} | {"threads": threads}
            for name, r in results.items()}
