"""Measuring an export inside its runtime with the metrics the PyTorch stages get.

Quality runs in this process on the runtime's own logits: perplexity on the eval windows
(:func:`slimkit.evaluation.perplexity`) and task accuracy through the same task code
(:mod:`slimkit.evaluation.tasks`), both fed by :class:`RuntimeModel`, which makes a
:class:`~slimkit.core.plugin.RuntimeSession` answer like a causal-LM module. Speed runs in fresh
processes (:mod:`slimkit.deploy.serving`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping

import torch

from slimkit.core.errors import DataError
from slimkit.core.plugin import RuntimeSession


class RuntimeModel:
    """A runtime session seen as a causal LM: ``model(input_ids=..., attention_mask=...).logits``.

    Sequences are run without a cache. A right-padded batch (what the task code builds) is exact: a
    causal model's logits at the real positions do not depend on the padding after them. Left padding
    cannot be honoured without the runtime's masks and is refused.
    """

    def __init__(self, session: RuntimeSession):
        self.session = session

    def eval(self) -> "RuntimeModel":
        return self

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> Any:
        if attention_mask is not None:
            mask = attention_mask.to(torch.long)
            lengths = mask.sum(1, keepdim=True)
            positions = torch.arange(mask.shape[1]).expand_as(mask)
            if not torch.equal(mask, (positions < lengths).long()):
                raise DataError("a runtime export can only be evaluated on right-padded batches")
        return SimpleNamespace(logits=self.session.logits(input_ids).float())


def quality(session: RuntimeSession, windows: torch.Tensor | None, tokenizer: Any, tasks: list[str],
            task_samples: int | None, baseline: Mapping[str, Any], batch_size: int = 4, label: str = "export",
            task_windows: torch.Tensor | None = None) -> dict[str, Any]:
    """Perplexity on ``windows`` and each task's score through lm-evaluation-harness (``final`` and
    ``retained`` against the baseline's ``tasks`` scores), measured on the runtime's logits.
    ``task_windows`` (the run's evaluation windows) feed the tasks cut from held-out text (``cloze``)."""
    from slimkit.evaluation import perplexity
    from slimkit.evaluation.tasks import TaskSet, task_records

    model = RuntimeModel(session)
    out: dict[str, Any] = {"perplexity": None, "tasks": {}}
    if windows is not None:
        out["perplexity"] = perplexity(model, windows, batch_size, desc=f"perplexity [{label}]")  # type: ignore[arg-type]
    if tasks:
        task_set = TaskSet(tasks)
        task_set.bind(SimpleNamespace(eval=task_windows if task_windows is not None else windows), tokenizer)
        scores = task_set.evaluate(model, tokenizer, task_samples, batch_size, label)  # type: ignore[arg-type]
        records = task_records(task_set.info(), baseline.get("tasks") or {}, scores)
        out["tasks"] = {name: {"metric": r["metric"], "final": r["final"], "retained": r["retained"]}
                        for name, r in records.items()}
    return out
