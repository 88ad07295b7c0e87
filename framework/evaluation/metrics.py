"""Honest measurements: held-out perplexity, parameter counts, and latency timed with pinned
threads, alternating the models under comparison in one process and taking medians."""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm.auto import tqdm

from slimkit.models import count_parameters


def model_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` on ``input_ids`` without a KV cache (no_grad, not inference_mode:
    quanto's int4/int2 kernels fail under inference_mode)."""
    device = getattr(model, "device", None)  # transformers models say where their inputs go
    if isinstance(device, torch.device) and device.type != "meta":
        input_ids = input_ids.to(device)
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4, desc: str = "perplexity") -> float:
    """exp(mean next-token cross-entropy) over fixed, non-overlapping token windows."""
    total_loss, total_tokens = 0.0, 0
    model.eval()
    for start in tqdm(range(0, windows.shape[0], batch_size), desc=desc, leave=False, unit="batch"):
        batch = windows[start:start + batch_size]
        logits = model_logits(model, batch)
        targets = batch[:, 1:].to(logits.device)
        for row in range(batch.shape[0]):  # one window at a time: no batch-sized copies of the logits
            total_loss += torch.nn.functional.cross_entropy(logits[row, :-1].float(), targets[row],
                                                            reduction="sum").item()
        total_tokens += targets.numel()
        del logits
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


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy: position t's logits predict token t+1 (the last position is dropped)."""
    shifted = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), input_ids[:, 1:].reshape(-1),
                                             reduction=reduction)


def summed_nll_consuming(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``next_token_nll(logits, input_ids, "sum")`` without a second logits-sized buffer (no grad, CPU): the
    log-softmax is written over the float logits, which are garbage afterwards. The same two kernels as
    ``cross_entropy`` (log-softmax, then the NLL sum), so the same bits; elsewhere it is ``next_token_nll``."""
    if logits.device.type != "cpu" or torch.is_grad_enabled():
        return next_token_nll(logits, input_ids, "sum")
    shifted = logits[:, :-1].float()
    flat = shifted.reshape(-1, shifted.shape[-1])
    torch.log_softmax(flat, -1, out=flat)
    return torch.nn.functional.nll_loss(flat, input_ids[:, 1:].reshape(-1), reduction="sum")


def mean_next_token_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4) -> float:
    """Mean next-token cross-entropy of ``model`` over every predicted token of ``windows`` (no grad)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start:start + batch_size]
            total += summed_nll_consuming(model(input_ids=batch, use_cache=False).logits, batch).item()
            count += batch[:, 1:].numel()
    return total / count if count else float("nan")

