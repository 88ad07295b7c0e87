"""Shared fixtures for slimkit's core tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub


def compose(*overrides: str):
    """Compose slimkit's shipped config (with every installed backend registered) like the CLI does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from slimkit.pipeline.config import register_configs

    register_configs()
    with initialize_config_module(config_module="slimkit.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def tiny_cfg():
    """A factory: the tiny-model experiment config plus overrides."""
    return lambda *overrides: compose("experiment=tiny", *overrides)
