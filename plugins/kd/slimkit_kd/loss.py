"""Distillation losses: temperature-scaled logit KL, hard-label cross-entropy, hidden-state MSE."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from slimkit.evaluation.metrics import next_token_nll


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
    ce = next_token_nll(student_logits, input_ids)
    loss = alpha * kl + (1.0 - alpha) * ce
    return loss, {"kl": kl.item(), "ce": ce.item()}


class LayerOutputs:
    """Capture the outputs of chosen decoder layers during a forward pass (forward hooks).

    Hooks, not ``output_hidden_states``: in transformers 5 the last entry of ``hidden_states`` is
    taken after the final norm, which would compare a normed with an un-normed stream.
    """

    def __init__(self, layers: torch.nn.ModuleList, indices: Sequence[int]):
        self.layers, self.indices, self.outputs, self._handles = layers, sorted(set(indices)), {}, []

    def __enter__(self) -> dict[int, torch.Tensor]:
        for i in self.indices:
            def hook(module, args, output, i=i):
                self.outputs[i] = output[0] if isinstance(output, tuple) else output
            self._handles.append(self.layers[i].register_forward_hook(hook))
        return self.outputs

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def hidden_mse(student_hidden: Mapping[int, torch.Tensor], teacher_hidden: Mapping[int, torch.Tensor],
               layer_map: Sequence[Sequence[int]]) -> torch.Tensor:
    """Mean over mapped layers of MSE(student layer output, teacher layer output), each pair
    normalised by the teacher's mean square so the term does not depend on activation scale.

    ``layer_map`` pairs 0-based decoder-layer indices (student, teacher); the maps hold each
    layer's output (see :class:`LayerOutputs`).
    """
    terms = []
    for s_idx, t_idx in layer_map:
        s_h, t_h = student_hidden[s_idx].float(), teacher_hidden[t_idx].float()
        terms.append(F.mse_loss(s_h, t_h) / t_h.pow(2).mean().clamp_min(1e-6))
    return torch.stack(terms).mean()
