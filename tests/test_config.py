"""Every shipped config composes; bad values fail with the key, the value and what is allowed."""

from __future__ import annotations

from importlib import resources

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from slimkit import ConfigError, default_registry
from slimkit.core.errors import UnknownPluginError
from slimkit.core.plugin import Kind
from slimkit.pipeline.config import explain_compose_error, stage_config
from slimkit.pipeline import resolve_stages

from .conftest import compose


def shipped_options():
    root = resources.files("slimkit.conf")
    for group in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for option in sorted(p.name[:-5] for p in (root / group).iterdir() if p.name.endswith(".yaml")):
            yield group, option


@pytest.mark.parametrize("group,option", list(shipped_options()))
def test_every_yaml_composes(group, option):
    # sweep presets configure Hydra's sweeper/launcher and are appended (+sweep=...), never defaults
    overrides = [f"+{group}={option}" if group == "sweep" else f"{group}={option}"]
    if group == "model" and option == "local":
        overrides.append("model.path=/some/folder")
    try:
        cfg = compose(*overrides)
    except ConfigCompositionException as exc:  # a preset naming an optional plugin this environment lacks (CI has all)
        error = explain_compose_error(exc, overrides)
        if isinstance(error, UnknownPluginError):
            pytest.skip(str(error))
        raise
    assert cfg.model.name and cfg.pipeline.order


def test_a_preset_naming_an_uninstalled_backend_says_which_and_what_is_installed():
    """Hydra's message when an experiment's defaults name a backend no installed plugin registers becomes
    slimkit's "no such backend is installed" error (as for the same name on the command line)."""
    registry = default_registry()
    exc = ConfigCompositionException("In 'experiment/x': Could not load 'exporter/nosuch'.")
    error = explain_compose_error(exc, ["experiment=x"], registry)
    assert isinstance(error, UnknownPluginError)
    assert (error.kind, error.name, error.installed) == ("exporter", "nosuch", sorted(registry.names(Kind.EXPORTER)))
    assert "exporter='nosuch': no such exporter backend is installed" in str(error)


def test_default_recipe_is_prune_then_quantize_on_the_embedded_model():
    cfg = compose()
    assert cfg.model.name == "smollm2-135m"
    assert cfg.pruner.backend == "magnitude" and cfg.quantizer.backend == "quanto" and cfg.distiller is None
    assert list(cfg.pipeline.order) == ["pruner", "distiller", "quantizer"]


def test_backend_swap_by_name_and_null_stage():
    cfg = compose("pruner=random", "~quantizer")
    assert cfg.pruner.backend == "random" and cfg.quantizer is None


def test_typed_error_names_full_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose("pruner.sparsity=abc")
    assert "pruner.sparsity" in str(err.value.__cause__) or "pruner.sparsity" in str(err.value)


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException) as err:
        compose("quantizer.bitz=4")
    assert isinstance(err.value.__cause__, (ConfigKeyError, ValidationError)) or "bitz" in str(err.value)


@pytest.mark.parametrize("override,key,allowed", [
    ("pruner.sparsity=1.5", "pruner.sparsity", "[0.0, 1.0)"),
    ("pruner.sparsity=-0.1", "pruner.sparsity", "[0.0, 1.0)"),
    ("quantizer.bits=3", "quantizer.bits", "one of"),
    ("pruner.scope=rows", "pruner.scope", "'global'"),
])
def test_out_of_range_values_fail_before_any_model_loads(override, key, allowed):
    cfg = compose(override)
    with pytest.raises(ConfigError) as err:
        resolve_stages(cfg, default_registry())
    assert err.value.key == key and allowed in str(err.value)
    assert repr(err.value.value) in str(err.value)


def test_stage_config_rejects_unknown_keys_from_untyped_yaml():
    from omegaconf import OmegaConf

    cls = default_registry().get("quantizer", "quanto")
    with pytest.raises(ConfigError, match="quantizer.bitz"):
        stage_config(cls, OmegaConf.create({"backend": "quanto", "bitz": 4}), "quantizer")
