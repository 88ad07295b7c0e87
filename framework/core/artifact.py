"""Atomic artifacts: a model folder appears complete, or not at all.

Every artifact is written into a hidden sibling folder, finished with a ``slimkit.json`` manifest,
and renamed into place; a crash or Ctrl-C leaves only the hidden folder, which :func:`load` refuses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # pragma: no cover
    import torch

from slimkit.core.errors import ArtifactError, ModelLoadError

MANIFEST = "slimkit.json"
FORMAT_VERSION = 1


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``target`` only if the block finishes.

    Refuses to replace an existing ``target`` unless ``overwrite`` is true; then the old folder is
    removed only after the new one is complete.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise ArtifactError(f"output folder {str(target)!r} already exists; refusing to overwrite it "
                            "(set output.overwrite=true to replace it, or choose another folder)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers see the old content or the new, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_manifest(directory: Path, info: dict[str, Any]) -> None:
    """Write the manifest last: its presence marks the artifact complete."""
    data = {"format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
    (directory / MANIFEST).write_text(json.dumps(data, indent=2, default=str))


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Read an artifact's manifest; raise :class:`ArtifactError` if the folder is not a complete artifact."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{str(directory)!r} is not a folder; expected a slimkit artifact folder")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{str(directory)!r} has no {MANIFEST}: it is not a complete slimkit artifact "
                            "(an interrupted save leaves no manifest)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{str(path)!r} is corrupt: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{str(path)!r} has format_version={manifest.get('format_version')!r}; "
                            f"this slimkit reads {FORMAT_VERSION}")
    return manifest


def directory_size(directory: str | os.PathLike) -> int:
    """Bytes of all files under ``directory``."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def load_pretrained(path: str | os.PathLike, trust_remote_code: bool = False, dtype: Any = "auto",
                    **kwargs: Any) -> torch.nn.Module:
    """Load a causal LM from safetensors only (never unpickles).

    ``dtype``: ``"auto"`` keeps the dtype the folder was saved in (an artifact reloads as it was written),
    or a ``torch.dtype`` / its name (``"float32"``) to cast while loading.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load a model from {str(path)!r}: {exc}") from exc
    return model.eval()


def saved_dtype(config: Any) -> "torch.dtype":
    """The dtype a transformers ``config`` records for its weights (float32 when it records none), for
    backends that rebuild a model skeleton from the config before loading their own tensors."""
    import torch

    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else torch.float32
