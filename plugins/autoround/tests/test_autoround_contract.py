import copy
import functools

import pytest

pytest.importorskip("auto_round")
pytest.importorskip("compressed_tensors")

from slimkit.testing import StageContract, tiny_state  # noqa: E402
from slimkit_autoround import AutoRoundQuantizer  # noqa: E402


@functools.lru_cache(maxsize=1)
def _cached_state():
    return tiny_state()  # tokenizing the data slices dominates; build once, copy per variant


class TestAutoRoundContract(StageContract):
    stage_cls = AutoRoundQuantizer
    # tiny iteration counts: the contract checks the plumbing, the benchmark checks the quality
    configs = [
        {"method": "signround", "iters": 2, "group_size": 32},
        {"method": "rtn", "group_size": 64, "embedding": "int4"},
        {"method": "rtn", "sym": False, "embedding": "int8",
         "overrides": {"model.layers.0.*": 8, "model.layers.3.mlp.*": None}},
    ]
    # beyond the declared ranges/choices: cross-field checks of __post_init__
    invalid_values = {"iters": [0]}  # with the default method=signround (rtn is the zero-iteration method)
    reload_atol = 1e-4

    def _state(self):
        return copy.deepcopy(_cached_state())
