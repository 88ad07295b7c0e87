"""On the real SmolLM2-135M (9 query heads on 3 KV heads): MLP 30% + 1 of 3 KV groups reloads with
plain ``AutoModelForCausalLM.from_pretrained`` to identical logits."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.integration
def test_smollm2_structured_prune_reloads_with_plain_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM

    from slimkit.data import build_splits
    from slimkit.evaluation import model_logits
    from slimkit.models import load_model
    from slimkit.core.state import PipelineState
    from slimkit_torch_pruning import StructuredPruner, StructuredPruningConfig

    torch.set_num_threads(1)
    loaded = load_model("smollm2-135m")
    data = build_splits(loaded.tokenizer, seq_len=128, train_tokens=1024, calibration_samples=4, eval_tokens=256)
    state = PipelineState(loaded.model, loaded.tokenizer, data, loaded.model, work_dir=tmp_path)
    metrics = StructuredPruner(StructuredPruningConfig(sparsity=0.3, heads_sparsity=1 / 3,
                                                       importance="activation")).apply(state)
    config = state.model.config
    # 30% of the selected weights (all 30 layers' projections); 1 of 3 KV groups removes 294,912 attention weights
    # per layer, MLP channels the rest: (0.3 * 3,538,944 - 294,912) / 2,654,208 = 0.289 -> 1,092 of 1,536 kept
    assert (config.intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (1092, 6, 2)
    assert abs(metrics["achieved_sparsity"] - 0.3) < 0.001
    assert (config.hidden_size, config.head_dim) == (576, 64)
    # per layer: 444 MLP channels x (gate row + up row + down column), 3 query heads (q rows + o columns),
    # 1 KV head (k + v rows), each 64 wide, on hidden size 576
    removed = 30 * (444 * 3 * 576 + 3 * 64 * 2 * 576 + 1 * 64 * 2 * 576)
    assert metrics["parameters_after"] == metrics["parameters_before"] - removed
    probe = data.eval[:1, :64]
    before = model_logits(state.model, probe)
    state.model.save_pretrained(tmp_path / "pruned", safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", dtype=torch.float32).eval()
    assert torch.equal(model_logits(reloaded, probe), before)
