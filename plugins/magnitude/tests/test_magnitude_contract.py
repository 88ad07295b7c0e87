from slimkit.testing import StageContract
from slimkit_magnitude import MagnitudePruner


class TestMagnitudeContract(StageContract):
    stage_cls = MagnitudePruner
    configs = [{"sparsity": 0.5}, {"sparsity": 0.3, "scope": "global"}, {"sparsity": 0.0}]
