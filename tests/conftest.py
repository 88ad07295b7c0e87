"""Core-test helpers; the shared fixtures (tiny_cfg) live in the repository's root conftest.py."""

from slimkit.testing.config import compose

__all__ = ["compose"]
