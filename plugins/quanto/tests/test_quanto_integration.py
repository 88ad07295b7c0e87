"""On the real SmolLM2-135M: int8 weights + calibrated int8 activations reload to the same logits
(BACKENDS.md recorded a 0.215 max |Δlogit| before the streamline choices were saved)."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.integration
def test_smollm2_w8a8_reloads_exactly(tmp_path):
    from slimkit.data import build_splits
    from slimkit.evaluation import model_logits
    from slimkit.models import load_model
    from slimkit.core.state import PipelineState
    from slimkit_quanto import QuantoConfig, QuantoQuantizer

    torch.set_num_threads(1)
    loaded = load_model("smollm2-135m")
    data = build_splits(loaded.tokenizer, seq_len=128, train_tokens=512, calibration_samples=2, eval_tokens=256)
    state = PipelineState(loaded.model, loaded.tokenizer, data, loaded.model, work_dir=tmp_path)
    stage = QuantoQuantizer(QuantoConfig(bits=8, activations="int8-tensor"))
    stage.apply(state)
    probe = data.eval[:1, :64]
    before = model_logits(state.model, probe)
    stage.save(state.model, tmp_path / "artifact")
    reloaded = QuantoQuantizer.load(tmp_path / "artifact", {})
    assert (model_logits(reloaded, probe) - before).abs().max().item() <= 1e-4
