import copy
import functools

import torch

from slimkit.data import DataSplits
from slimkit.models import tiny_model, tiny_tokenizer
from slimkit.state import PipelineState
from slimkit.testing import StageContract
from slimkit_wanda import WandaPruner


@functools.lru_cache(maxsize=1)
def _cached_state():
    """The tiny model on random token windows (tiny_state() tokenizes the corpus: 20-50 s on a busy machine)."""
    g = torch.Generator().manual_seed(0)
    data = DataSplits(train=torch.randint(0, 512, (16, 64), generator=g), eval=torch.randint(0, 512, (4, 64), generator=g),
                      seq_len=64, calibration_samples=4, info={"source": "random token ids"})
    model = tiny_model(0)
    return PipelineState(model, tiny_tokenizer(), data, copy.deepcopy(model).requires_grad_(False))


class TestWandaContract(StageContract):
    stage_cls = WandaPruner
    configs = [{"sparsity": 0.5}, {"sparsity": 0.3, "scope": "layer"}, {"sparsity": 0.0},
               {"sparsity": 0.5, "pattern": "2:4"}, {"sparsity": 0.6, "schedule": {"steps": 2, "ramp": "linear"}}]

    def _state(self):
        return copy.deepcopy(_cached_state())
