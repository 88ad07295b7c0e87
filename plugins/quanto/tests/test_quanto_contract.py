from slimkit.testing import StageContract
from slimkit_quanto import QuantoQuantizer


class TestQuantoContract(StageContract):
    stage_cls = QuantoQuantizer
    configs = [{"bits": 8}, {"bits": 4}, {"bits": 2}, {"bits": 8, "activations": 8},
               {"bits": 4, "activations": 8},
               {"bits": 4, "overrides": {"lm_head": 8, "model.layers.0.*": 8, "model.layers.3.mlp.*": None}}]
    reload_atol = 1e-4
