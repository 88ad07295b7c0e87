"""The shared plugin contract for the kd distiller (tiny model, a few steps per variant)."""

from kd_helpers import fresh_state
from slimkit_kd import KDDistiller

from slimkit.testing import StageContract


class TestKDContract(StageContract):
    def _state(self):
        return fresh_state()

    stage_cls = KDDistiller
    configs = [
        {"max_steps": 3, "eval_every": 2, "batch_size": 2},
        {"max_steps": 2, "student_layers": "every_other", "hidden_weight": 0.5, "alpha": 1.0, "temperature": 4.0},
        {"max_steps": 2, "student_layers": [0, 3], "student_from": "teacher", "eval_every": 0},
        {"max_steps": 2, "qat_bits": 4, "eval_every": 0},
    ]
