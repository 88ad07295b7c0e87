from slimkit.testing import StageContract, random_token_state
from slimkit_wanda import WandaPruner


class TestWandaContract(StageContract):
    stage_cls = WandaPruner
    configs = [{"sparsity": 0.5}, {"sparsity": 0.3, "scope": "layer"}, {"sparsity": 0.5, "pattern": "2:4"}, {"sparsity": 0.6, "schedule": {"steps": 2, "ramp": "linear"}}]
    unchanged_configs = [{"sparsity": 0.0}]

    def _state(self):
        return random_token_state()
