import copy
import functools

from slimkit.testing import StageContract, tiny_state
from slimkit_wanda import WandaPruner


@functools.lru_cache(maxsize=1)
def _cached_state():
    return tiny_state()  # building the tiny splits takes ~20 s; share it


class TestWandaContract(StageContract):
    stage_cls = WandaPruner
    configs = [{"sparsity": 0.5}, {"sparsity": 0.3, "scope": "layer"}, {"sparsity": 0.0},
               {"sparsity": 0.5, "pattern": "2:4"}, {"sparsity": 0.6, "schedule": {"steps": 2, "ramp": "linear"}}]

    def _state(self):
        return copy.deepcopy(_cached_state())
