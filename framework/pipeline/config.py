"""Typed config schemas and their registration in Hydra's ConfigStore.

Core groups (``model``, ``data``, ``eval``) get schemas here; every installed backend's ``Config``
dataclass is registered under its kind's group with a ``backend`` field naming it, so
``slimkit --help`` lists third-party backends and typos get Hydra's typed errors.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, List, Mapping, Optional, Sequence

from slimkit.core.errors import ConfigError, SlimkitError, UnknownPluginError
from slimkit.core.plugin import Kind, Stage, StageConfig, plugin_config
from slimkit.core.registry import Registry, default_registry


@dataclasses.dataclass
class ModelConfig:
    """Which model to compress."""

    #: embedded model ('smollm2-135m'), 'tiny' (tests), or a hub id; ignored when ``path`` is set
    name: str = "smollm2-135m"
    #: a local Hugging Face model folder
    path: Optional[str] = None
    #: run code shipped with a hub model; off unless you trust it
    trust_remote_code: bool = False
    #: weights dtype: float32 | bfloat16 | float16, or auto (the checkpoint's own); every chosen backend must support it
    dtype: str = "float32"
    #: cpu | cuda | auto (accelerate's device map: the GPUs when visible, else the CPU)
    device: str = "cpu"


@dataclasses.dataclass
class DataConfig:
    """Text for training/calibration (head of the stream) and evaluation (tail), never sharing a document."""

    #: the embedded text ('wikipedia'); ignored when ``path`` is set
    source: str = "wikipedia"
    #: a local corpus: a .txt/.md, .jsonl/.json, .csv or .parquet file, a glob of them, or a save_to_disk folder
    path: Optional[str] = None
    #: text | json | csv | parquet | saved; default: from the extension (a folder: saved)
    format: Optional[str] = None
    #: the column holding each document's text (chat messages with chat_template=true)
    field: str = "text"
    #: the split of a saved DatasetDict (default: its only split, or 'train')
    split: Optional[str] = None
    #: render each record with the tokenizer's chat template (field = a messages column, or the prompt
    #: column when response_field is set)
    chat_template: bool = False
    #: with chat_template: the column of assistant answers to ``field``'s prompts
    response_field: Optional[str] = None
    seq_len: int = 256
    train_tokens: int = 32768
    calibration_samples: int = 16
    eval_tokens: int = 8192


@dataclasses.dataclass
class EvalConfig:
    """What is measured before and after compression."""

    perplexity: bool = True
    #: tasks scored through lm-evaluation-harness on the original and the final model: built-in
    #: (sentiment, cloze, analogy), lm-eval task YAML paths, or lm-eval task names (see slimkit.evaluation.tasks)
    tasks: List[str] = dataclasses.field(default_factory=lambda: ["sentiment"])
    #: examples per task: the first N of its evaluation split (lm-eval's limit); null: all
    task_samples: Optional[int] = 200
    latency: bool = True
    #: torch threads while timing; pinned so numbers compare
    threads: int = 1
    prompt_tokens: int = 128
    decode_tokens: int = 32
    repeats: int = 5
    #: windows/prompts per forward pass for perplexity and tasks. 1 (the default) keeps the full-vocabulary
    #: logits of one sequence in memory (SmolLM2: 4 windows of 256 tokens = 0.2 GB of logits) and scores every
    #: prompt alone, as it is served; on CPU larger batches are not faster
    batch_size: int = 1
    #: 'serving': rounds of fresh processes, one per model, each loading only the original or the artifact (how a
    #: deployed model runs);
    #: 'in_process': this run's own process. The report's timing.condition says which
    latency_condition: str = "serving"
    #: fresh processes for the serving condition (per-process ratios; the report gives median, min, max)
    latency_processes: int = 3


LATENCY_CONDITIONS = ("serving", "in_process")


def check_eval(eval_cfg: Mapping[str, Any]) -> None:
    """Range and choice checks of the ``eval`` group (before any model loads)."""
    from slimkit.core.plugin import check_choice, check_range

    check_choice("eval.latency_condition", eval_cfg.get("latency_condition", "serving"), LATENCY_CONDITIONS)
    check_range("eval.latency_processes", eval_cfg.get("latency_processes", 3), 1)
    for key in ("threads", "repeats", "prompt_tokens", "batch_size"):
        if key in eval_cfg:
            check_range(f"eval.{key}", eval_cfg[key], 1)
    if eval_cfg.get("task_samples") is not None:  # null: every example of each task
        check_range("eval.task_samples", eval_cfg["task_samples"], 1)


@dataclasses.dataclass
class PipelineConfig:
    """Stage order; a stage whose group is null is skipped."""

    order: List[str] = dataclasses.field(default_factory=lambda: ["pruner", "distiller", "quantizer"])


@dataclasses.dataclass
class OutputConfig:
    #: replace an existing model/ folder in the output directory
    overwrite: bool = False
    #: where the artifact goes; default <hydra output dir>/model
    model_dir: Optional[str] = None


def backend_node(cls: type[Stage]) -> Any:
    """The ConfigStore node for a backend: its Config dataclass plus ``backend: <name>``."""
    node_cls = dataclasses.make_dataclass(
        f"{cls.Config.__name__}Node", [("backend", str, dataclasses.field(default=cls.name))], bases=(cls.Config,))
    node_cls.__doc__ = cls.Config.__doc__
    return node_cls


@dataclasses.dataclass
class BrokenPluginNode:
    """Placeholder for a plugin that failed to load; selecting it raises the load error."""

    backend: str = ""


def register_configs(registry: Registry | None = None) -> None:
    """Register core schemas and every installed backend's config in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    from slimkit.core.errors import PluginError

    registry = registry or default_registry()
    cs = ConfigStore.instance()
    cs.store(group="model", name="schema", node=ModelConfig)
    cs.store(group="data", name="schema", node=DataConfig)
    cs.store(group="eval", name="schema", node=EvalConfig)
    for kind in Kind:
        for info in registry.infos(kind):
            try:
                node = backend_node(registry.get(kind, info.name))
            except PluginError:
                node = BrokenPluginNode(backend=info.name)  # the pipeline raises the real error if chosen
            # exporters sit at exporter.<name>, so exporter=[gguf,onnx] selects several side by side
            package = f"exporter.{info.name}" if kind is Kind.EXPORTER else None
            cs.store(group=kind.value, name=info.name, node=node, provider=info.distribution, package=package)


def stage_config(cls: type[Stage], node: Any, key: str) -> StageConfig:
    """Build a backend's Config from a (possibly untyped) config node; unknown keys are errors
    (see :func:`slimkit.core.plugin.plugin_config`)."""
    return plugin_config(cls, node, key)


def _override_values(overrides: Sequence[str]) -> dict[str, str]:
    values = {}
    for item in overrides:
        key, sep, value = item.lstrip("+~").partition("=")
        if sep:
            values[key] = value
    return values


def explain_compose_error(exc: BaseException, overrides: Sequence[str], registry: Registry | None = None) -> SlimkitError:
    """Turn Hydra/OmegaConf's composition error into a slimkit error naming the key, the value and what is
    allowed (for an unknown key: every valid key of that backend)."""
    from slimkit.core.errors import ConfigError, SlimkitError

    registry = registry or default_registry()
    chain, seen = [], exc
    while seen is not None and len(chain) < 5:  # Hydra wraps OmegaConf's error, which names the key
        chain.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    text = "\n".join(chain)
    full_key = re.search(r"full_key: ([\w.\[\]]+)", text)
    override = re.search(r"override '([\w.]+)'", text)
    key = full_key.group(1) if full_key else (override.group(1) if override else None)
    value = _override_values(overrides).get(key or "", None)
    unloadable = re.search(r"Could not load '(\w+)/(\w+)'", text)  # e.g. an experiment's defaults name a backend
    if unloadable and unloadable.group(1) in STAGE_GROUPS:  # that this environment does not have
        kind = Kind(unloadable.group(1))
        if unloadable.group(2) not in registry.names(kind):
            return UnknownPluginError(kind.value, unloadable.group(2), registry.names(kind))
    missing = re.search(r"Key '([^']+)' not in '(\w+)'", text)
    if key and missing:
        node_name = missing.group(2)
        for kind in Kind:
            for info in registry.infos(kind):
                try:
                    cls = registry.get(kind, info.name)
                except SlimkitError:
                    continue
                if backend_node(cls).__name__ == node_name:
                    fields = sorted(f.name for f in dataclasses.fields(cls.Config))
                    return ConfigError(key, value, f"a key of the {kind.value} {info.name!r}: {', '.join(fields)}")
    converted = re.search(r"Value '([^']*)'(?: of type '\w+')? (?:could not be converted to|is not a valid) (\w+)", text)
    if key and converted:
        return ConfigError(key, converted.group(1), f"a value of type {converted.group(2)}")
    first = chain[0].strip().splitlines()[0] if chain[0].strip() else type(exc).__name__
    return ConfigError(key or "config", value, "a configuration that composes", first)


#: the config groups a run chooses by name; the stage groups among them can be dropped with ``~group``
STAGE_GROUPS = tuple(kind.value for kind in Kind)
GROUPS = ("model", "data", "eval", "experiment", "sweep") + STAGE_GROUPS


def check_composes(overrides: Sequence[str], registry: Registry | None = None) -> dict[str, Any]:
    """Compose the run's config as Hydra will (without Hydra's own settings) and return it as a plain
    dict; a composition error becomes a slimkit :class:`ConfigError` (see :func:`explain_compose_error`)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    task = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    for override in task:  # Hydra's own message for these is a bare ValueError with no key
        group, _, value = override.partition("=")
        if value.strip().lower() in ("null", "none", "~") and group in GROUPS:
            if group not in STAGE_GROUPS:
                raise ConfigError(group, None, f"the name of a {group} config")
            article = "an" if group[0] in "aeiou" else "a"
            raise ConfigError(group, None, f"{article} {group} backend name, or ~{group} to drop the stage",
                              f"write ~{group} instead of {override}")
    try:
        with initialize_config_module(config_module="slimkit.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=task)
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as exc:
        raise explain_compose_error(exc, task, registry) from None
