"""Test helpers for slimkit and its plugins: tiny pipeline states and the shared plugin contract."""

from slimkit.testing.contract import StageContract
from slimkit.testing.states import TINY_DATA, random_token_state, tiny_state

__all__ = ["StageContract", "TINY_DATA", "random_token_state", "tiny_state"]
