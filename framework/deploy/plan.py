"""Which exporters a run uses, checked before any model loads.

``exporter=gguf`` or ``exporter=[gguf,onnx]`` selects configs from the ``exporter`` group; each is
stored at ``exporter.<name>`` (see :func:`slimkit.pipeline.config.register_configs`), so a run's
settings hold ``{"exporter": {"gguf": {"backend": "gguf", "weights": "q4_0"}, ...}}`` and a knob is
``exporter.gguf.weights=q4_0``. A mapping with a ``backend`` key (one exporter written by hand, as
in a Python config) and a list of such mappings are accepted too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from slimkit import models as slimkit_models
from slimkit.core.errors import ConfigError
from slimkit.core.plugin import Exporter, Kind, plugin_config
from slimkit.core.registry import PluginInfo, Registry


@dataclasses.dataclass
class PlannedExport:
    """One configured exporter: the plugin instance and where it comes from."""

    exporter: Exporter
    info: PluginInfo

    @property
    def name(self) -> str:
        return self.info.name


def exporter_nodes(settings: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(config key, node)`` for each exporter the settings select, in order."""
    node = settings.get("exporter")
    if node is None:
        return []
    if isinstance(node, Mapping) and "backend" in node:
        return [("exporter", node)]
    if isinstance(node, Mapping):
        items = list(node.items())
    elif isinstance(node, Sequence) and not isinstance(node, str):
        items = [(str(i), n) for i, n in enumerate(node)]
    else:
        raise ConfigError("exporter", node, "an exporter name from the `exporter` config group, e.g. exporter=gguf "
                          "or exporter=[gguf,onnx]")
    out = []
    for key, sub in items:
        if sub is None:
            continue
        if not isinstance(sub, Mapping) or not sub.get("backend"):
            raise ConfigError(f"exporter.{key}", sub, "an exporter config with a `backend` name, e.g. exporter=gguf")
        out.append((f"exporter.{key}", sub))
    names = [sub["backend"] for _, sub in out]
    if len(set(names)) != len(names):
        raise ConfigError("exporter", names, "each exporter at most once (every export goes to deploy/<exporter>/)")
    return out


def planned_writer(settings: Mapping[str, Any]) -> Optional[str]:
    """The backend expected to write the artifact: the configured quantizer, if any (its weights are
    what an exporter must carry through). Structured pruners may also write one; the pipeline checks
    the actual writer again after the stages ran."""
    order = (settings.get("pipeline") or {}).get("order") or ["pruner", "distiller", "quantizer"]
    node = settings.get("quantizer") if "quantizer" in order else None
    return node.get("backend") if isinstance(node, Mapping) else None


def resolve_exporters(settings: Mapping[str, Any], registry: Registry) -> list[PlannedExport]:
    """Find each selected exporter, check its dependencies (install hint), its config (weight format)
    and the planned artifact writer; all before any model is loaded."""
    plans = []
    writer = planned_writer(settings)
    model = settings.get("model") or {}
    model_config = slimkit_models.model_config(model.get("name", "smollm2-135m"), model.get("path"),
                                               bool(model.get("trust_remote_code", False)))
    for key, node in exporter_nodes(settings):
        cls = registry.get(Kind.EXPORTER, node["backend"])
        if not issubclass(cls, Exporter):
            raise ConfigError(key, node["backend"], "an exporter plugin", "the registered class is not an Exporter")
        cls.check_dependencies()
        exporter = cls(exporter_config(cls, node, key))
        exporter.check_before_load(settings)
        if model_config is not None:  # else deploy_one checks the loaded model before exporting
            exporter.check_model(model_config, writer)
        plans.append(PlannedExport(exporter, registry.info(Kind.EXPORTER, node["backend"])))
    return plans


def exporter_config(cls: type[Exporter], node: Mapping[str, Any], key: str) -> Any:
    """Build an exporter's Config from its settings node; an unknown key is a :class:`ConfigError`."""
    return plugin_config(cls, node, key)


