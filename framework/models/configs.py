"""A model's transformers config, read without loading its weights (for checks before the model loads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def model_config(name: str = "smollm2-135m", path: Optional[str] = None, trust_remote_code: bool = False) -> Optional[Any]:
    """The ``PretrainedConfig`` of the model a ``model`` config names (same rules as
    :func:`slimkit.models.load_model`), or ``None`` where it cannot be read cheaply (a missing folder, which
    ``load_model`` reports itself; a hub id that is not cached). Reads ``config.json`` only; an unreadable one is
    a :class:`~slimkit.core.errors.ModelLoadError` naming the folder."""
    from transformers import AutoConfig

    from slimkit.core.errors import ModelLoadError
    from slimkit.models.loading import EMBEDDED, tiny_model

    if path:
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            return None
        try:
            return AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"model.path={str(path)!r}: cannot read its config.json: {exc}") from exc
    if name == "tiny":
        return tiny_model().config  # ~0.1M parameters built from config: milliseconds
    if name in EMBEDDED:
        folder = EMBEDDED[name][0]()  # the converted folder (converted once, then cached)
        return AutoConfig.from_pretrained(str(folder))
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
