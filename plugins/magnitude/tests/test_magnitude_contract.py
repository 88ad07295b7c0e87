import copy
import functools

from slimkit.testing import StageContract, tiny_state
from slimkit_magnitude import MagnitudePruner


@functools.lru_cache(maxsize=1)
def _cached_state():
    return tiny_state()  # building the tiny splits takes ~20 s; share it


class TestMagnitudeContract(StageContract):
    stage_cls = MagnitudePruner
    configs = [{"sparsity": 0.5}, {"sparsity": 0.3, "scope": "global"}, {"sparsity": 0.0},
               {"sparsity": 0.5, "pattern": "2:4"}, {"sparsity": 0.6, "scope": "row", "schedule": {"steps": 2}}]

    def _state(self):
        return copy.deepcopy(_cached_state())
