"""Measurements: perplexity, task accuracy, latency (in-process and in fresh serving processes)."""

from slimkit.evaluation.latency import latency, pinned_threads
from slimkit.evaluation.metrics import (
    model_logits,
    nonzero_parameters,
    perplexity,
    quality_metrics,
)

__all__ = ["latency", "model_logits", "nonzero_parameters", "perplexity", "pinned_threads", "quality_metrics"]
