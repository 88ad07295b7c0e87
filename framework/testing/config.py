"""Composing slimkit's shipped config in tests, the way the CLI does."""

from __future__ import annotations

from typing import Any


def compose(*overrides: str) -> Any:
    """slimkit's config with every installed backend registered, plus ``overrides`` (Hydra syntax)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from slimkit.pipeline.config import register_configs

    register_configs()
    with initialize_config_module(config_module="slimkit.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))
