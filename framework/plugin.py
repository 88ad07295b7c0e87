"""The plugin interface: one small class per backend.

A backend is a :class:`Stage` subclass with a ``name``, a ``kind`` (pruner, distiller or
quantizer), a typed ``Config`` dataclass and one method, :meth:`Stage.apply`. Backends whose
result ``save_pretrained`` cannot write override :meth:`Stage.save` / :meth:`Stage.load`.
"""

from __future__ import annotations

import dataclasses
import importlib
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from .errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .state import PipelineState


class Kind(str, Enum):
    """The stage kinds; each has its own entry-point group and Hydra config group."""

    PRUNER = "pruner"
    DISTILLER = "distiller"
    QUANTIZER = "quantizer"

    @property
    def entry_point_group(self) -> str:
        return f"slimkit.{self.value}s"


@dataclasses.dataclass
class StageConfig:
    """Base of every backend config. Subclasses add typed fields and range checks in ``__post_init__``."""

    def __post_init__(self) -> None:  # subclasses call super().__post_init__()
        pass


def check_range(key: str, value: Any, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``low (<|<=) value (<|<=) high``."""
    ok = True
    if low is not None:
        ok &= value > low if low_open else value >= low
    if high is not None:
        ok &= value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        interval = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
        raise ConfigError(key, value, f"a number in {interval}")


def check_choice(key: str, value: Any, allowed: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(key, value, "one of " + ", ".join(map(repr, allowed)))


class Stage:
    """One compression backend (a plugin).

    Subclasses set the class attributes and implement :meth:`apply`::

        class MyPruner(Stage):
            kind = Kind.PRUNER
            name = "mine"
            Config = MyPrunerConfig            # a dataclass deriving from StageConfig
            requires = {"torch_pruning": "pip install torch-pruning"}

            def apply(self, state):
                ...                            # change state.model in place (or replace it)
                return {"sparsity": 0.5}       # metrics for the report
    """

    kind: ClassVar[Kind]
    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    #: import name -> install hint; checked before any model is loaded
    requires: ClassVar[Mapping[str, str]] = {}

    def __init__(self, config: StageConfig | None = None):
        self.config = config if config is not None else self.Config()

    @classmethod
    def check_dependencies(cls) -> None:
        """Raise :class:`MissingDependencyError` (with the install hint) if a required module is missing."""
        for module, hint in cls.requires.items():
            try:
                importlib.import_module(module)
            except Exception as exc:  # ImportError, or a broken native library
                raise MissingDependencyError(cls.name, module, hint, exc) from exc

    def check_before_load(self, settings: Mapping[str, Any]) -> None:
        """Optional checks that need the whole run's settings; runs before the model loads."""

    def apply(self, state: "PipelineState") -> dict[str, Any]:
        """Apply this stage to ``state.model``; return metrics for the report."""
        raise NotImplementedError

    # --- artifact I/O: override only when save_pretrained cannot write the result -------------
    def save(self, model: "torch.nn.Module", directory: Path) -> None:
        """Write ``model``'s weights and config into ``directory`` (safetensors only)."""
        model.save_pretrained(directory, safe_serialization=True)

    @classmethod
    def load(cls, directory: Path, manifest: Mapping[str, Any]) -> "torch.nn.Module":
        """Rebuild a model saved by :meth:`save`."""
        from .models import load_pretrained

        return load_pretrained(directory)
