"""Test helpers for slimkit and its plugins: tiny pipeline states and the shared plugin contract."""

from slimkit.testing.contract import StageContract
from slimkit.testing.exporter_contract import ExporterContract
from slimkit.testing.states import TINY_DATA, random_token_state, tiny_state

__all__ = ["ExporterContract", "StageContract", "TINY_DATA", "random_token_state", "tiny_state"]
