"""slimkit's exception tree: users catch these, not the backends' own errors."""

from __future__ import annotations

from typing import Any, Iterable


class SlimkitError(Exception):
    """Base class of every error slimkit raises on purpose."""


class ConfigError(SlimkitError, ValueError):
    """A configuration value is not allowed; names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str, why: str = ""):
        self.key, self.value, self.allowed = key, value, allowed
        msg = f"{key}={value!r} is not allowed: expected {allowed}"
        super().__init__(msg + (f" ({why})" if why else ""))


class PluginError(SlimkitError):
    """A plugin could not be found, loaded or registered."""


class UnknownPluginError(PluginError, KeyError):
    """No installed plugin of that kind has that name."""

    def __init__(self, kind: str, name: str, installed: Iterable[str]):
        import difflib

        names = sorted(installed)
        self.kind, self.name, self.installed = kind, name, names
        self.suggestions = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
        listed = ", ".join(names) if names else "none"
        hint = f" Did you mean {' or '.join(repr(s) for s in self.suggestions)}?" if self.suggestions else ""
        super().__init__(
            f"{kind}={name!r}: no such {kind} backend is installed.{hint} Installed: {listed}. "
            f"A backend from another package is installed with that package's own pip command "
            f"(see `slimkit plugins` for what is installed and which distribution supplies each)."
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class MissingDependencyError(SlimkitError, ImportError):
    """An optional dependency of a backend is not importable; carries the install hint."""

    def __init__(self, backend: str, module: str, hint: str, cause: BaseException | None = None):
        self.backend, self.module, self.hint = backend, module, hint
        why = f": {cause}" if cause else ""
        super().__init__(f"backend {backend!r} needs the module {module!r}, which cannot be imported{why}. Install it with `{hint}`")


class StageOrderError(SlimkitError):
    """Stages were asked to run in an order that cannot work."""


class ModelLoadError(SlimkitError):
    """A model or tokenizer could not be loaded from where the config points."""


class ArtifactError(SlimkitError):
    """A saved artifact is missing, incomplete, corrupt, or would overwrite another."""


class DataError(SlimkitError):
    """Evaluation or calibration data cannot be built as configured."""
