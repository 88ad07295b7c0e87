"""lm-evaluation-harness glue: slimkit's model object as an lm-eval model, and offline task loading.

:class:`SlimkitLM` subclasses lm-eval's ``HFLM`` so every lm-eval request type (log-likelihood,
rolling log-likelihood, generation) works on the model slimkit holds in memory — any backend, before or
after compression, or reloaded from an artifact. A plain ``torch.nn.Module`` whose ``forward(input_ids=...)``
returns an object with ``.logits`` works too. lm-eval never touches the objects slimkit keeps: the model is
wrapped (HFLM would re-tie its embeddings, which breaks or silently changes a compressed model) and the
tokenizer copied (HFLM may set a pad token on it, which would then be saved with the artifact).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any, Iterator

import torch

#: loggers lm-eval and datasets are chatty on (one line per task and split)
_QUIET = ("lm_eval", "lm-eval", "datasets")


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hugging Face Hub access off (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``), also for libraries that
    read the variables at import time, and lm-eval's per-task logging quietened."""
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update({k: "1" for k in saved_env})
    patched: list[tuple[Any, str, Any]] = []
    for module_name, attrs in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                               ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        try:
            module = __import__(module_name, fromlist=["_"])
        except ImportError:  # pragma: no cover - both come with lm-eval
            continue
        for attr in attrs:
            if hasattr(module, attr):
                patched.append((module, attr, getattr(module, attr)))
                setattr(module, attr, True)
    bars = _datasets_progress_bars(False)
    levels = {name: logging.getLogger(name).level for name in _QUIET}
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        _datasets_progress_bars(bars)


def _datasets_progress_bars(enabled: bool) -> bool:
    """Switch datasets' per-split progress bars; returns whether they were on."""
    try:
        import datasets
    except ImportError:  # pragma: no cover
        return False
    before = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    return before


class _LogitsModule(torch.nn.Module):
    """What lm-eval's HF model class sees: ``device``/``config`` for any module, ``tie_weights`` a no-op,
    ``generate`` passed through (generation tasks need a model that has it)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        from transformers import PretrainedConfig

        self.inner = inner
        self.config = getattr(inner, "config", None) or PretrainedConfig()

    @property
    def device(self) -> torch.device:
        parameters = getattr(self.inner, "parameters", None)  # a runtime session (deploy) has none: CPU
        first = next(parameters(), None) if callable(parameters) else None
        return first.device if first is not None else torch.device("cpu")

    def tie_weights(self, *args: Any, **kwargs: Any) -> None:
        """Leave the model's weights as slimkit made them (lm-eval calls this on Hugging Face models)."""

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        if not hasattr(self.inner, "generate"):
            from slimkit.core.errors import ConfigError

            raise ConfigError("eval.tasks", "a generate_until task", "log-likelihood tasks for this model",
                              f"{type(self.inner).__name__} has no generate()")
        return self.inner.generate(*args, **kwargs)

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        return self.inner(input_ids=input_ids, **kwargs)


def _model_class():
    from lm_eval.models.huggingface import HFLM

    class SlimkitLM(HFLM):
        """lm-eval's Hugging Face model interface over a model object (no loading, no device moves)."""

        def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_size: int = 4, max_length: int | None = None):
            import copy

            model, tokenizer = _LogitsModule(model), copy.deepcopy(tokenizer)
            if max_length is None:
                config = getattr(model, "config", None)
                max_length = getattr(config, "max_position_embeddings", None) or 2048
            super().__init__(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                             max_length=max_length)

        def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                        labels: torch.Tensor | None = None) -> torch.Tensor:
            # no_grad, not inference_mode (quanto's int4/int2 kernels fail under it); no KV cache to build
            with torch.no_grad():
                return self.model(input_ids=inps, use_cache=False).logits

    return SlimkitLM


def lm_eval_model(model: torch.nn.Module, tokenizer: Any, batch_size: int = 4, max_length: int | None = None):
    """An lm-eval ``LM`` (an ``HFLM`` subclass) evaluating ``model`` as it is in memory."""
    with offline():
        return _model_class()(model.eval(), tokenizer, batch_size=batch_size, max_length=max_length)
