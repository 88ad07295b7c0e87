import copy
import functools

from slimkit.testing import StageContract, tiny_state
from slimkit_quanto import QuantoQuantizer


@functools.lru_cache(maxsize=1)
def _cached_state():
    return tiny_state()  # tokenizing the data slices dominates; build once, copy per variant


class TestQuantoContract(StageContract):
    stage_cls = QuantoQuantizer
    configs = [{"bits": 8}, {"bits": 4}, {"bits": 2}, {"bits": 8, "activations": "int8-tensor"},
               {"bits": 4, "activations": "int8-tensor"},
               {"bits": 4, "overrides": {"lm_head": 8, "model.layers.0.*": 8, "model.layers.3.mlp.*": None}}]
    reload_atol = 1e-4

    def _state(self):
        return copy.deepcopy(_cached_state())
