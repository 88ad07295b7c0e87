"""Honest measurements: held-out perplexity, parameter counts, and latency timed with pinned
threads, alternating the models under comparison in one process and taking medians."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Any, Iterator, Mapping

import torch
from tqdm.auto import tqdm

from .models import count_parameters


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


def model_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` on ``input_ids`` without a KV cache (no_grad, not inference_mode:
    quanto's int4/int2 kernels fail under inference_mode)."""
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4, desc: str = "perplexity") -> float:
    """exp(mean next-token cross-entropy) over fixed, non-overlapping token windows."""
    total_loss, total_tokens = 0.0, 0
    model.eval()
    for start in tqdm(range(0, windows.shape[0], batch_size), desc=desc, leave=False, unit="batch"):
        batch = windows[start:start + batch_size]
        logits = model_logits(model, batch)[:, :-1].float()
        targets = batch[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        total_loss += loss.item()
        total_tokens += targets.numel()
    return math.exp(total_loss / total_tokens)


def nonzero_parameters(model: torch.nn.Module) -> int:
    """Nonzero entries of the model's float and int8-code parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen and (p.is_floating_point() or p.dtype == torch.int8):
            seen.add(id(p))
            total += int(torch.count_nonzero(p.detach()))
    return total


def quality_metrics(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4, desc: str = "perplexity") -> dict[str, Any]:
    """Perplexity on the eval slice plus parameter counts."""
    return {
        "perplexity": perplexity(model, windows, batch_size, desc),
        "parameters": count_parameters(model),
        "nonzero_parameters": nonzero_parameters(model),
    }


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
            decode_tokens: int = 32) -> dict[str, dict[str, float]]:
    """Median prefill ms and decode tokens/s for each model, timed alternately in this process.

    Every round runs each model once in turn, so drift in machine load hits all of them alike.
    """
    results: dict[str, dict[str, list[float]]] = {name: {"prefill_ms": [], "decode_tokens_per_s": []} for name in models}
    with pinned_threads(threads):
        for model in models.values():  # warm-up: allocator, kernels, lazy init
            _prefill_ms(model, prompt)
            _decode_tokens_per_s(model, prompt, 2)
        for _ in tqdm(range(repeats), desc=f"latency ({threads} thread{'s' if threads != 1 else ''})", leave=False):
            for name, model in models.items():
                results[name]["prefill_ms"].append(_prefill_ms(model, prompt))
                results[name]["decode_tokens_per_s"].append(_decode_tokens_per_s(model, prompt, decode_tokens))
    return {name: {key: statistics.median(vals) for key, vals in r.items()} | {"threads": threads}
            for name, r in results.items()}
