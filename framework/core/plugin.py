"""The plugin API: one small class per backend.

A backend is a :class:`Stage` (pruner, distiller, quantizer) or an :class:`Exporter` (a runtime
format), each with a ``name``, a ``kind``, a typed ``Config`` dataclass and one or two methods.
Configs derive from the base config of their kind (:class:`PrunerConfig`, :class:`QuantizerConfig`,
:class:`DistillerConfig`, :class:`ExporterConfig`), which carries the knobs every backend of that
kind shares, each with one meaning.
"""

from __future__ import annotations

import dataclasses
import importlib
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Mapping, Optional, Protocol, Sequence

from slimkit.core.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from slimkit.core.state import PipelineState


class Kind(str, Enum):
    """The plugin kinds; each has its own entry-point group (``slimkit.<kind>s``) and Hydra config group."""

    PRUNER = "pruner"
    DISTILLER = "distiller"
    QUANTIZER = "quantizer"
    EXPORTER = "exporter"

    @property
    def entry_point_group(self) -> str:
        return f"slimkit.{self.value}s"


#: the kinds that change the model, in their default order; exporters run after them
STAGE_KINDS = (Kind.PRUNER, Kind.DISTILLER, Kind.QUANTIZER)

#: the values ``model.dtype`` resolves to (``auto`` becomes the checkpoint's own dtype before any check)
DTYPES = ("float32", "bfloat16", "float16")
#: the device types ``model.device`` resolves to (``auto``: accelerate's device map, i.e. cuda when visible)
DEVICES = ("cpu", "cuda")


def ranged(default: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Any:
    """A config field whose value must lie in a range; checked in ``StageConfig.__post_init__`` and by the
    contract suite (``null`` passes when the default is ``None``)."""
    return dataclasses.field(default=default, metadata={"range": (low, high, low_open, high_open)})


def choice(default: Any, options: Sequence[Any]) -> Any:
    """A config field whose value must be one of ``options``; checked like :func:`ranged`."""
    return dataclasses.field(default=default, metadata={"choices": tuple(options)})


@dataclasses.dataclass
class StageConfig:
    """Base of every backend config. Subclasses add typed fields; ranges and choices declared with
    :func:`ranged` / :func:`choice` are checked here, other checks go in ``__post_init__``."""

    #: the config group its errors name (``pruner.sparsity``); set by each kind's base config
    KEY_PREFIX: ClassVar[str] = ""

    def __post_init__(self) -> None:  # subclasses call super().__post_init__()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            key = f"{self.KEY_PREFIX}.{f.name}" if self.KEY_PREFIX else f.name
            if "range" in f.metadata:
                low, high, low_open, high_open = f.metadata["range"]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(key, value, "a number")
                check_range(key, value, low, high, low_open=low_open, high_open=high_open)
            if "choices" in f.metadata:
                check_choice(key, value, f.metadata["choices"])


def _default_exclude() -> list[str]:
    return ["lm_head"]


@dataclasses.dataclass
class PrunerConfig(StageConfig):
    """Knobs every pruner shares.

    ``sparsity`` is the fraction of the *prunable weights* removed: the weights of the Linear modules
    selected by ``include``/``exclude``. A structured pruner maps it onto channels or heads and reports
    the fraction it achieved (``achieved_sparsity``) in its metrics.
    """

    #: fraction of the selected Linear modules' weights removed, 0 <= sparsity < 1
    sparsity: float = ranged(0.5, 0.0, 1.0, high_open=True)
    #: glob patterns of Linear module names (``model.layers.*.mlp.*``) that may be pruned
    include: List[str] = dataclasses.field(default_factory=lambda: ["*"])
    #: glob patterns of Linear module names kept whole (lm_head is tied to the embedding)
    exclude: List[str] = dataclasses.field(default_factory=_default_exclude)
    #: glob -> sparsity for matching Linear modules (first matching glob wins)
    overrides: Dict[str, float] = dataclasses.field(default_factory=dict)

    KEY_PREFIX: ClassVar[str] = "pruner"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.overrides = dict(self.overrides)
        for glob, value in self.overrides.items():
            check_range(f"pruner.overrides[{glob!r}]", value, 0.0, 1.0, high_open=True)


#: override values that mean "keep this module in float"
FLOAT_WORDS = ("float", "fp", "none", "null")

#: the activation-quantization vocabulary every quantizer uses (``quantizer.activations``):
#: null = weights only; ``int8-token`` = int8 with one scale per token, computed at run time;
#: ``int8-tensor`` = int8 with one scale per tensor (static, from calibration, or dynamic: the backend says)
ACTIVATION_SCHEMES = (None, "int8-token", "int8-tensor")


@dataclasses.dataclass
class QuantizerConfig(StageConfig):
    """Knobs every quantizer shares. Subclasses set ``ALLOWED_BITS`` and ``ACTIVATIONS`` to what they can do."""

    #: default weight bit-width of the selected Linear modules
    bits: int = 8
    #: glob patterns of Linear module names to quantize
    include: List[str] = dataclasses.field(default_factory=lambda: ["*"])
    #: glob patterns of Linear module names kept in float (lm_head is tied to the embedding)
    exclude: List[str] = dataclasses.field(default_factory=_default_exclude)
    #: glob -> bits (or null/"float" to keep float) for matching Linear modules, applied in order
    overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    #: activation quantization, one of ACTIVATION_SCHEMES (null = weights only)
    activations: Optional[str] = None

    #: the weight bit-widths this backend can do
    ALLOWED_BITS: ClassVar[tuple[int, ...]] = (8,)
    #: the activation schemes (from ACTIVATION_SCHEMES) this backend can do
    ACTIVATIONS: ClassVar[tuple[Optional[str], ...]] = (None,)
    KEY_PREFIX: ClassVar[str] = "quantizer"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("quantizer.bits", self.bits, self.ALLOWED_BITS)
        check_choice("quantizer.activations", self.activations, self.ACTIVATIONS)
        self.overrides = dict(self.overrides)
        for pattern, value in self.overrides.items():
            parse_bits(f"quantizer.overrides[{pattern!r}]", value, self.ALLOWED_BITS)


@dataclasses.dataclass
class DistillerConfig(StageConfig):
    """Knobs every distiller shares: the loss is ``alpha·T²·KL(teacher/T ‖ student/T) + (1-alpha)·CE``."""

    #: softmax temperature of the soft targets
    temperature: float = ranged(2.0, 0.0, low_open=True)
    #: weight of the soft-target (KL) term; 1 - alpha weighs next-token cross-entropy
    alpha: float = ranged(0.5, 0.0, 1.0)
    #: optimizer steps
    max_steps: int = ranged(100, 0)
    #: learning rate
    lr: float = ranged(5e-5, 0.0, low_open=True)
    #: windows per optimizer step (the global batch, over all processes)
    batch_size: int = ranged(4, 1)

    KEY_PREFIX: ClassVar[str] = "distiller"


@dataclasses.dataclass
class ExporterConfig(StageConfig):
    """Knobs every exporter shares."""

    #: the weight format written for the runtime; each exporter lists what it accepts.
    #: "auto" carries slimkit's own weights through where the format can hold them
    weights: str = "auto"

    KEY_PREFIX: ClassVar[str] = "exporter"


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


def parse_bits(key: str, value: Any, allowed: Sequence[int]) -> Optional[int]:
    """An override value as bits (an allowed int) or ``None`` (keep float); else :class:`ConfigError`."""
    if value is None or (isinstance(value, str) and value.strip().lower() in FLOAT_WORDS):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip().isdigit()):
        raise ConfigError(key, value, "one of " + ", ".join(map(repr, allowed)) + ", or null/'float' to keep it float")
    bits = int(value)
    if bits not in allowed:
        raise ConfigError(key, value, "one of " + ", ".join(map(repr, allowed)) + ", or null/'float' to keep it float")
    return bits


class Plugin:
    """What every plugin has: a kind, a name, a typed config, optional dependencies and early checks."""

    kind: ClassVar[Kind]
    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    #: import name -> install hint; checked before any model is loaded
    requires: ClassVar[Mapping[str, str]] = {}
    #: the model dtypes (from :data:`DTYPES`) and device types (from :data:`DEVICES`) this backend works with;
    #: the pipeline refuses any other ``model.dtype``/``model.device`` before the model loads, naming these.
    #: The default is what every backend was first written for: float32 on the CPU.
    supports: ClassVar[Mapping[str, frozenset[str]]] = {"dtypes": frozenset({"float32"}),
                                                         "devices": frozenset({"cpu"})}

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


class Stage(Plugin):
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

    #: True for a stage that may legitimately leave the model unchanged (the contract then skips that check)
    noop: ClassVar[bool] = False
    #: True for a stage that reads the original model's *weights* (``state.reference``, e.g. as a teacher).
    #: The pipeline then loads the original beside the model being compressed; otherwise ``state.reference``
    #: is a weightless copy on the meta device (config and shapes only), so no second copy sits in memory.
    #: A subclass may make it a property of its config (a distiller with its own teacher needs none).
    needs_reference: ClassVar[bool] = False
    #: True for a stage that zeroes weights in place (unstructured pruning): later writers should store them sparsely
    zeroes_weights: ClassVar[bool] = False
    #: the form of the weights this stage's artifact holds, which exporters read (:mod:`slimkit.deploy.holdings`):
    #: "float", "dequantizable" (tensors that dequantize themselves exactly), "int_codes" (float weights equal to
    #: integer codes x scales, the codes on each module as ``slimkit_int_weights``) or "runtime_kernels"
    artifact_weights: ClassVar[str] = "float"
    #: quantizers may define ``simulate(model) -> undo``: fake-quantize (straight-through rounding), for
    #: quantization-aware training by a distiller before them, exactly the weights :meth:`apply` will quantize on
    #: its own grid; ``undo()`` removes the simulation and leaves the trained float weights. None: not offered.
    simulate: ClassVar[Optional[Callable[..., Callable[[], int]]]] = None

    def check_model(self, model_config: Any) -> None:
        """Optional: before any weights load, raise a slimkit error (naming the model type, this backend and what
        it supports) if this stage cannot handle the model ``model_config`` (a transformers config) describes."""

    def apply(self, state: "PipelineState") -> dict[str, Any]:
        """Apply this stage to ``state.model``; return metrics for the report."""
        raise NotImplementedError

    def keeps_sparse_storage(self) -> bool:
        """Whether this stage's artifact still stores exact zeros sparsely (bitmask + values) when an earlier
        stage zeroed weights. Writers that save through ``slimkit.toolkit.storage.save_tensors`` do; a
        format that packs codes so that zero is not the byte 0 returns False, and the pipeline then refuses
        the combination at config time instead of silently writing a dense file."""
        return True

    # --- artifact I/O: override only when save_pretrained cannot write the result -------------
    def save(self, model: "torch.nn.Module", directory: Path) -> None:
        """Write ``model``'s weights and config into ``directory`` (safetensors only)."""
        model.save_pretrained(directory, safe_serialization=True)

    @classmethod
    def load(cls, directory: Path, manifest: Mapping[str, Any]) -> "torch.nn.Module":
        """Rebuild a model saved by :meth:`save`."""
        from slimkit.core.artifact import load_pretrained

        return load_pretrained(directory)


class RuntimeSession(Protocol):
    """An export loaded in its runtime, for evaluation there. A session may also set ``runtime`` (str) when
    it is not the exporter's declared runtime (e.g. a fallback); the report's ``runtime`` uses it."""

    runtime_version: str

    def logits(self, input_ids: "torch.Tensor") -> "torch.Tensor":
        """[B, T] token ids -> [B, T, V] float32 logits, without a cache."""

    def generate(self, input_ids: "torch.Tensor", new_tokens: int) -> list[int]:
        """Greedy decode of ``new_tokens`` tokens with the runtime's KV cache (batch 1)."""


class Exporter(Plugin):
    """Writes the final model in a runtime's format and opens it there (``exporter=<name>``)."""

    kind = Kind.EXPORTER
    Config: ClassVar[type[StageConfig]] = ExporterConfig
    #: the runtime that serves the export, e.g. "openvino"
    runtime: ClassVar[str] = ""

    def check_model(self, model_config: Any, writer: Optional[str]) -> None:
        """Before any weights load: raise a slimkit error if this runtime cannot take the model type
        (``model_config``, a transformers config) or an artifact written by the backend ``writer``."""

    def export(self, artifact_dir: Path, model: "torch.nn.Module", tokenizer: Any, out_dir: Path) -> dict[str, Any]:
        """Write the runtime's files into the empty folder ``out_dir``; return facts for the report
        (at least ``format``, ``requantized`` and ``notes``)."""
        raise NotImplementedError

    @classmethod
    def open(cls, out_dir: Path, threads: int = 1) -> RuntimeSession:
        """Load an export in its runtime, pinned to ``threads``."""
        raise NotImplementedError


def plugin_config(cls: type["Plugin"], node: Any, key: str) -> StageConfig:
    """Build a backend's Config from a (possibly untyped) config node; unknown keys are errors."""
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    values.pop("backend", None)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", values[unknown[0]], f"a key of {cls.Config.__name__}: {', '.join(sorted(fields))}")
    return cls.Config(**values)
