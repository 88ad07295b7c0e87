from slimkit.testing import StageContract, random_token_state
from slimkit_magnitude import MagnitudePruner


class TestMagnitudeContract(StageContract):
    stage_cls = MagnitudePruner
    configs = [{"sparsity": 0.5}, {"sparsity": 0.3, "scope": "global"}, {"sparsity": 0.5, "pattern": "2:4"}, {"sparsity": 0.6, "scope": "row", "schedule": {"steps": 2}}]
    unchanged_configs = [{"sparsity": 0.0}]

    def _state(self):
        return random_token_state()
