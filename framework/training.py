"""Short fine-tuning on the training slice: the default recovery step between pruning steps."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from tqdm.auto import tqdm


def next_token_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on a batch of token windows."""
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


def finetune(state, steps: int, lr: float = 5e-5, batch_size: int = 4) -> dict[str, Any]:
    """Fine-tune ``state.model`` for ``steps`` optimizer steps of next-token loss on ``state.data.train``.

    Zeros already in the weights (pruning masks) are kept: gradients of zero weights are masked.
    """
    if steps <= 0:
        return {"steps": 0}
    model = state.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]
    masks = {p: (p != 0) for p in params if p.dim() == 2 and bool((p == 0).any())}
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(state.seed)
    windows = state.data.train
    order = itertools.cycle(torch.randperm(windows.shape[0], generator=generator).split(batch_size))
    losses = []
    for _ in tqdm(range(steps), desc="recovery fine-tune", leave=False):
        loss = next_token_loss(model, windows[next(order)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p, mask in masks.items():
                p.mul_(mask)
        losses.append(loss.item())
    model.eval()
    return {"steps": steps, "first_loss": losses[0], "last_loss": losses[-1],
            "last_perplexity_train": math.exp(sum(losses[-5:]) / len(losses[-5:]))}
