"""Fixtures shared by the core tests (tests/) and the first-party plugins' tests (plugins/*/tests)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub


@pytest.fixture
def tiny_cfg():
    """A factory: the tiny-model experiment config plus overrides."""
    from slimkit.testing.config import compose

    return lambda *overrides: compose("experiment=tiny", *overrides)
