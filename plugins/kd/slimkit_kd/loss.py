"""Distillation losses: temperature-scaled logit KL, hard-label cross-entropy, hidden-state MSE."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def kd_logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor,
                  temperature: float, alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``alpha * T² * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, next tokens)``.

    The KL is summed over the vocabulary and averaged over predicted positions (the last position
    of each window has no next token and is dropped for both terms).
    """
    s = student_logits[:, :-1].float()
    t = teacher_logits[:, :-1].float()
    vocab = s.shape[-1]
    s_log = F.log_softmax(s.reshape(-1, vocab) / temperature, dim=-1)
    t_log = F.log_softmax(t.reshape(-1, vocab) / temperature, dim=-1)
    kl = F.kl_div(s_log, t_log, log_target=True, reduction="batchmean") * temperature ** 2
    ce = F.cross_entropy(s.reshape(-1, vocab), input_ids[:, 1:].reshape(-1))
    loss = alpha * kl + (1.0 - alpha) * ce
    return loss, {"kl": kl.item(), "ce": ce.item()}


def hidden_mse(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
               layer_map: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Mean over mapped layers of MSE(student layer output, teacher layer output), each pair
    normalised by the teacher's mean square so the term does not depend on activation scale.

    ``layer_map`` pairs 0-based decoder-layer indices (student, teacher); index ``i`` is the
    output of layer ``i`` (``hidden_states[i + 1]``).
    """
    terms = []
    for s_idx, t_idx in layer_map:
        s_h, t_h = student_hidden[s_idx + 1].float(), teacher_hidden[t_idx + 1].float()
        terms.append(F.mse_loss(s_h, t_h) / t_h.pow(2).mean().clamp_min(1e-6))
    return torch.stack(terms).mean()
