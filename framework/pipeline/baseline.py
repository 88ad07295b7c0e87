"""The baseline, evaluated once per sweep: cached under a hash of what it depends on."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from filelock import FileLock

from slimkit.core.artifact import atomic_write_text

log = logging.getLogger("slimkit")

def is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode is RunMode.MULTIRUN
    except Exception:  # pragma: no cover - no Hydra context
        return False


def _fingerprint(path: str | None) -> list[Any]:
    """Names, sizes and mtimes of a local model folder, so an edited model misses the cache."""
    if not path or not Path(path).is_dir():
        return []
    return sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(path).iterdir() if p.is_file())


def _data_fingerprint(path: str | None) -> list[Any]:
    """Names, sizes and mtimes of the files ``data.path`` names (a file, a glob or a saved-dataset folder)."""
    if not path:
        return []
    import glob

    target = Path(path).expanduser()
    files = [target] if target.is_file() else sorted(target.rglob("*")) if target.is_dir() else \
        sorted(Path(p) for p in glob.glob(str(target), recursive=True))
    return [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in files if p.is_file()]


def baseline_key(settings: Mapping[str, Any]) -> str:
    """Hash of everything the baseline's quality and size depend on: model, data, eval config,
    seed (random-init test models), torch and transformers versions."""
    import torch
    import transformers

    model = dict(settings.get("model") or {})
    data_path = (settings.get("data") or {}).get("path")
    parts = {"model": model, "model_files": _fingerprint(model.get("path")), "data": settings.get("data"),
             "data_files": _data_fingerprint(data_path),
             "eval": settings.get("eval"), "seed": settings.get("seed", 0), "torch": torch.__version__,
             "transformers": transformers.__version__}
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def baseline_cache_dir(settings: Mapping[str, Any]) -> Path | None:
    """Where baseline metrics are cached: ``sweep.baseline_cache`` (a folder), or ``auto`` = the
    sweep folder's ``.slimkit/`` during a multirun and no cache for single runs; ``off`` disables."""
    value = (settings.get("sweep") or {}).get("baseline_cache", "auto")
    if value in (None, False, "off", "none", "null"):
        return None
    if value == "auto":
        if not is_multirun():
            return None
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().sweep.dir) / ".slimkit"
    return Path(str(value))




def cached_baseline(settings: Mapping[str, Any], compute: Callable[[], dict[str, Any]],
                    part: str = "quality") -> dict[str, Any]:
    """Baseline metrics ``compute()`` once per sweep: the first job computes and stores them under
    a hash of (model, data, eval config, seed, versions), every later job with the same key reuses
    them. ``part`` separates independently cached pieces (``quality``, ``tasks``...). Without a
    cache location (single runs by default) this is just ``compute()``."""
    location = baseline_cache_dir(settings)
    if location is None:
        return compute()
    key = baseline_key(settings)
    path = location / f"baseline-{part}-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        if path.is_file():
            try:
                values = json.loads(path.read_text())["metrics"]
                log.info("baseline %s metrics reused from %s", part, path)
                return dict(values)
            except (ValueError, KeyError, TypeError):
                log.warning("baseline cache %s is unreadable; recomputing it", path)
        values = compute()
        atomic_write_text(path, json.dumps({"key": key, "part": part, "model": settings.get("model"),
                                        "metrics": values}, indent=2, default=str))
        return dict(values)


