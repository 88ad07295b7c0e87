"""The entry-point plugin registry.

Plugins are discovered from the entry-point groups ``slimkit.pruners``, ``slimkit.distillers``,
``slimkit.quantizers`` and ``slimkit.exporters``; first-party backends use the same groups a third party would. Discovery reads
metadata only; a plugin's module is imported when it is first asked for.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
from typing import Callable, Iterable

from slimkit.core.errors import PluginError, UnknownPluginError
from slimkit.core.plugin import Kind, Plugin


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """Where a plugin comes from: its kind, name, entry point and the distribution that supplied it."""

    kind: Kind
    name: str
    target: str
    distribution: str
    version: str

    def describe(self) -> str:
        return f"{self.kind.value} {self.name!r} from {self.distribution} {self.version}"


EntryPointSource = Callable[[str], Iterable[md.EntryPoint]]


def _installed_entry_points(group: str) -> Iterable[md.EntryPoint]:
    return md.entry_points(group=group)


class Registry:
    """Finds, loads and describes installed plugins.

    ``entry_points`` maps a group name to its entry points; tests inject fakes here.
    """

    def __init__(self, entry_points: EntryPointSource = _installed_entry_points):
        self._entry_points = entry_points
        self._infos: dict[Kind, dict[str, tuple[PluginInfo, md.EntryPoint]]] = {}
        self._loaded: dict[tuple[Kind, str], type[Plugin]] = {}

    # -- discovery (metadata only) ------------------------------------------------------------
    def _discover(self, kind: Kind) -> dict[str, tuple[PluginInfo, md.EntryPoint]]:
        if kind in self._infos:
            return self._infos[kind]
        found: dict[str, tuple[PluginInfo, md.EntryPoint]] = {}
        for ep in self._entry_points(kind.entry_point_group):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(kind, ep.name, ep.value,
                              dist.name if dist else "unknown", dist.version if dist else "unknown")
            if ep.name in found:
                other = found[ep.name][0]
                if (other.distribution, other.target) == (info.distribution, info.target):
                    continue  # the same distribution seen twice on sys.path
                raise PluginError(
                    f"two installed distributions register the {kind.value} {ep.name!r}: "
                    f"{other.distribution} {other.version} ({other.target}) and "
                    f"{info.distribution} {info.version} ({info.target}); uninstall one of them"
                )
            found[ep.name] = (info, ep)
        self._infos[kind] = found
        return found

    def infos(self, kind: Kind | None = None) -> list[PluginInfo]:
        """Every discovered plugin (of one kind, or of all kinds), without importing any."""
        kinds = [kind] if kind else list(Kind)
        return [info for k in kinds for info, _ in sorted(self._discover(Kind(k)).values(), key=lambda x: x[0].name)]

    def names(self, kind: Kind) -> list[str]:
        return sorted(self._discover(Kind(kind)))

    def info(self, kind: Kind, name: str) -> PluginInfo:
        kind = Kind(kind)
        try:
            return self._discover(kind)[name][0]
        except KeyError:
            raise UnknownPluginError(kind.value, name, self.names(kind)) from None

    # -- loading -----------------------------------------------------------------------------
    def get(self, kind: Kind, name: str) -> type[Plugin]:
        """The plugin class for ``kind``/``name``; imports its module on first use."""
        kind = Kind(kind)
        key = (kind, name)
        if key in self._loaded:
            return self._loaded[key]
        info = self.info(kind, name)
        ep = self._discover(kind)[name][1]
        try:
            cls = ep.load()
        except Exception as exc:
            raise PluginError(f"the {info.describe()} failed to import ({info.target}): "
                              f"{type(exc).__name__}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            raise PluginError(f"the {info.describe()} points at {info.target}, which is not a slimkit Plugin (Stage or Exporter) subclass")
        if Kind(cls.kind) is not kind or cls.name != name:
            raise PluginError(f"the {info.describe()} loads a class that declares "
                              f"kind={Kind(cls.kind).value!r}, name={cls.name!r}; they must match its entry point")
        self._loaded[key] = cls
        return cls


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry over the installed distributions."""
    global _default
    if _default is None:
        _default = Registry()
    return _default
