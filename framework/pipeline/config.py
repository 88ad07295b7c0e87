"""Typed config schemas and their registration in Hydra's ConfigStore.

Core groups (``model``, ``data``, ``eval``) get schemas here; every installed backend's ``Config``
dataclass is registered under its kind's group with a ``backend`` field naming it, so
``slimkit --help`` lists third-party backends and typos get Hydra's typed errors.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional

from slimkit.core.plugin import Kind, Stage, StageConfig
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
    #: (sentiment, cloze), lm-eval task YAML paths, or lm-eval task names (see slimkit.evaluation.tasks)
    tasks: List[str] = dataclasses.field(default_factory=lambda: ["sentiment"])
    #: examples per task: the first N of its evaluation split (lm-eval's limit); null: all
    task_samples: Optional[int] = 200
    latency: bool = True
    #: torch threads while timing; pinned so numbers compare
    threads: int = 1
    prompt_tokens: int = 128
    decode_tokens: int = 32
    repeats: int = 5
    batch_size: int = 4


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
            cs.store(group=kind.value, name=info.name, node=node, provider=info.distribution)


def stage_config(cls: type[Stage], node: Any, key: str) -> StageConfig:
    """Build a backend's Config from a (possibly untyped) config node; unknown keys are errors."""
    from omegaconf import DictConfig, OmegaConf
    from slimkit.core.errors import ConfigError

    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    values.pop("backend", None)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", values[unknown[0]], f"a key of {cls.Config.__name__}: {', '.join(sorted(fields))}")
    return cls.Config(**values)
