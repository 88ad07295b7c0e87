"""Reloading any slimkit artifact: the manifest names the plugin whose ``load`` rebuilds it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from slimkit.core.artifact import load_pretrained, read_manifest
from slimkit.core.errors import ArtifactError, UnknownPluginError
from slimkit.core.plugin import Kind
from slimkit.core.registry import Registry, default_registry

if TYPE_CHECKING:  # pragma: no cover
    import torch


def load(path: str | Path, registry: Registry | None = None) -> "torch.nn.Module":
    """Reload a slimkit artifact (any backend) as a model in eval mode.

    Float artifacts load with plain ``from_pretrained`` (safetensors only); backend formats through the
    ``load`` of the plugin recorded as the manifest's ``writer``. If that plugin is not installed, the
    error names the distribution and version that wrote the artifact.
    """
    manifest = read_manifest(path)
    writer = manifest.get("writer")
    if not writer:
        return load_pretrained(path)
    try:
        cls = (registry or default_registry()).get(Kind(writer["kind"]), writer["backend"])
    except UnknownPluginError as exc:
        dist, version = writer.get("distribution", "unknown"), writer.get("version", "unknown")
        raise ArtifactError(
            f"{str(path)!r} was written by the {writer['kind']} {writer['backend']!r} from the distribution "
            f"{dist} {version}, which is not installed here. Install that distribution (the one that wrote it: "
            f"`pip install {dist}=={version}` if it is published, or from its source), then load it again. "
            f"Installed {writer['kind']}s: {', '.join(exc.installed) or 'none'}") from exc
    cls.check_dependencies()
    return cls.load(Path(path), manifest).eval()
