"""Wanda 2:4 on the real SmolLM2-135M: masks, sparse artifact, exact reload (slow: marked integration)."""

import copy

import pytest

from slimkit.toolkit.storage import WEIGHTS
import torch

from slimkit.data import build_splits
from slimkit.evaluation import model_logits
from slimkit.models import load_model
from slimkit.pipeline.runner import load, save_artifact, stage_record
from slimkit.core.registry import default_registry
from slimkit.core.state import PipelineState
from slimkit_wanda import WandaConfig, WandaPruner

pytestmark = pytest.mark.integration


def test_wanda_two_four_on_smollm2_saves_small_and_reloads_exactly(tmp_path):
    torch.set_num_threads(1)
    loaded = load_model("smollm2-135m")
    data = build_splits(loaded.tokenizer, seq_len=128, train_tokens=2048, calibration_samples=4, eval_tokens=256)
    state = PipelineState(loaded.model, loaded.tokenizer, data, copy.deepcopy(loaded.model), work_dir=tmp_path)
    stage = WandaPruner(WandaConfig(sparsity=0.5, pattern="2:4"))
    metrics = stage.apply(state)
    assert metrics["pruned_layers"] == 210 and metrics["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert state.artifact_writer is stage
    record = stage_record(default_registry().info(stage.kind, stage.name), stage)
    save_artifact(state, tmp_path / "model", overwrite=False, records=[record], model_info={"name": "smollm2-135m"})
    weights = (tmp_path / "model" / WEIGHTS).stat().st_size
    # 106.2M decoder weights at 50% + 1 mask bit each, plus the 28.3M dense embedding, all fp32
    assert weights < 4 * (106.2e6 * (0.5 + 1 / 32) + 28.4e6) * 1.01
    reloaded = load(tmp_path / "model")
    probe = data.eval[:1, :64]
    assert torch.equal(model_logits(reloaded, probe), model_logits(state.model, probe))
