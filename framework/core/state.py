"""What stages share: the model being compressed and everything around it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclasses.dataclass
class DataSplits:
    """Token windows for training/calibration and for evaluation, disjoint by construction."""

    train: torch.Tensor        # [n_train, seq_len] from the start of the stream
    eval: torch.Tensor         # [n_eval, seq_len] from the end of the stream
    seq_len: int
    calibration_samples: int
    info: dict[str, Any]

    @property
    def calibration(self) -> torch.Tensor:
        """The first ``calibration_samples`` training windows."""
        return self.train[: self.calibration_samples]


@dataclasses.dataclass
class PipelineState:
    """The pipeline's state, handed to each :meth:`Stage.apply` in turn.

    Stages change ``model`` in place or replace it. A stage that leaves the model in a form
    ``save_pretrained`` cannot write sets ``artifact_writer = self`` so its :meth:`Stage.save`
    writes the artifact.
    """

    model: "torch.nn.Module"
    tokenizer: Any
    data: "DataSplits"
    #: the original model, frozen: the teacher for distillation and the latency baseline
    reference: "torch.nn.Module"
    #: the whole resolved run config, read-only
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the Stage whose save/load formats the artifact (None: plain save_pretrained)
    artifact_writer: Optional[Any] = None
    #: kinds applied so far, in order
    applied: list[str] = dataclasses.field(default_factory=list)
    #: an unstructured pruner zeroed weights: later training (recovery, distillation) keeps exact zeros of
    #: 2-D weights at zero. Structured pruners remove weights instead and leave this False.
    zero_masks: bool = False
    #: ``recover(state, steps)`` fine-tunes ``state.model`` to recover quality; pruning schedules call it
    #: between steps. The pipeline sets plain fine-tuning, or a configured distiller's ``recover``.
    recover: Optional[Callable[["PipelineState", int], dict[str, Any]]] = None
    #: ``simulate_quantization(model) -> undo``: the run's quantizer's :attr:`Stage.simulate` (quantization-aware
    #: training on the grid that stage writes), or None when the run has no quantizer that offers one
    simulate_quantization: Optional[Callable[["torch.nn.Module"], Callable[[], int]]] = None
    #: a folder for a stage's scratch files, checkpoints and plots
    work_dir: Path = dataclasses.field(default_factory=lambda: Path("."))
    seed: int = 0
