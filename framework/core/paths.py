"""Where slimkit keeps converted models and downloaded task data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """slimkit's cache folder (``SLIMKIT_CACHE`` or ``~/.cache/slimkit``)."""
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))
