"""slimkit: make Hugging Face language models smaller and faster by pruning, distillation and
quantization, chained in one Hydra-configured pipeline whose backends are entry-point plugins."""

from slimkit.core.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    MissingDependencyError,
    ModelLoadError,
    PluginError,
    SlimkitError,
    StageOrderError,
    UnknownPluginError,
)
from slimkit.core.plugin import (
    ACTIVATION_SCHEMES,
    DistillerConfig,
    Exporter,
    ExporterConfig,
    Kind,
    Plugin,
    PrunerConfig,
    QuantizerConfig,
    RuntimeSession,
    Stage,
    StageConfig,
    check_choice,
    check_range,
)
from slimkit.core.registry import PluginInfo, Registry, default_registry

__version__ = "0.1.0"


def load(path, registry=None):
    """Reload a slimkit artifact folder as a model (see :func:`slimkit.core.loader.load`)."""
    from slimkit.core.loader import load as _load

    return _load(path, registry)


def run(cfg, output_dir=".", registry=None):
    """Run one compression job from a config mapping (see :func:`slimkit.pipeline.runner.run`)."""
    from slimkit.pipeline import run as _run

    return _run(cfg, output_dir, registry)


__all__ = [
    "ACTIVATION_SCHEMES", "ArtifactError", "ConfigError", "DataError", "DistillerConfig", "Exporter", "ExporterConfig",
    "Kind", "Plugin", "PrunerConfig", "QuantizerConfig", "RuntimeSession", "MissingDependencyError", "ModelLoadError", "PluginError",
    "PluginInfo", "Registry", "SlimkitError", "Stage", "StageConfig", "StageOrderError", "UnknownPluginError",
    "check_choice", "check_range", "default_registry", "load", "run",
]
