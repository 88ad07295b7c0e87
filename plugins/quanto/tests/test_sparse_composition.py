"""A pruner's sparse storage and a quantizer's format compose: the zeros of a 50% pruned model still
shrink the quantized file, for every quantizer that writes its own format (or the combination is refused
at config time)."""

from __future__ import annotations

import copy

import pytest
import torch

from slimkit import ConfigError, default_registry
from slimkit.core.artifact import directory_size
from slimkit.pipeline.runner import check_storage, save_artifact, stage_record
from slimkit.testing import random_token_state
from slimkit_magnitude import MagnitudeConfig, MagnitudePruner

QUANTIZERS = {"quanto": {"bits": 8}, "int8": {"smooth": False}, "bnb": {"bits": 8}}


def _artifact_bytes(tmp_path, sparsity: float, quantizer: str) -> int:
    state = random_token_state()
    registry = default_registry()
    records = []
    pruner = MagnitudePruner(MagnitudeConfig(sparsity=sparsity))
    cls = registry.get("quantizer", quantizer)
    stage = cls(cls.Config(**QUANTIZERS[quantizer]))
    for s in (pruner, stage):
        s.apply(state)
        records.append(stage_record(registry.info(s.kind, s.name), s))
    target = tmp_path / f"{quantizer}-{sparsity}"
    save_artifact(state, target, False, records, {"name": "tiny"}, probe=state.data.eval[:1, :16])
    return directory_size(target)


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_half_pruned_quantized_artifact_is_smaller_than_the_dense_one(tmp_path, quantizer):
    pytest.importorskip({"quanto": "optimum.quanto", "int8": "slimkit_int8", "bnb": "bitsandbytes"}[quantizer])
    dense, sparse = _artifact_bytes(tmp_path, 0.0, quantizer), _artifact_bytes(tmp_path, 0.5, quantizer)
    model = random_token_state().model
    pruned = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head")
    # 8-bit codes, one byte per pruned weight when dense; at 50% zeros a bitmask (1/8 byte) and half the bytes:
    # 3/8 of a byte saved per weight. Ask for at least 1/4 (scales and the float embedding do not shrink).
    assert dense - sparse >= pruned / 4, f"{quantizer}: {sparse} bytes at 50% vs {dense} at 0% ({pruned} weights pruned)"


def test_a_format_that_cannot_store_the_zeros_is_refused_at_config_time():
    pytest.importorskip("bitsandbytes")
    registry = default_registry()
    bnb = registry.get("quantizer", "bnb")
    stages = [(MagnitudePruner(MagnitudeConfig(sparsity=0.5)), registry.info("pruner", "magnitude")),
              (bnb(bnb.Config(bits=4)), registry.info("quantizer", "bnb"))]
    with pytest.raises(ConfigError, match="stored densely") as info:
        check_storage(stages)
    assert info.value.key == "quantizer" and info.value.value == "bnb"
    check_storage([stages[0], (bnb(bnb.Config(bits=8)), stages[1][1])])  # 8-bit codes keep zeros as zero bytes
    check_storage(copy.copy(stages[1:]))                                  # no unstructured pruner before it


def test_sparse_int8_with_quanto_shrinks_and_reloads(tmp_path):
    pytest.importorskip("optimum.quanto")
    from safetensors.torch import save_file
    from slimkit_quanto import QuantoQuantizer

    from slimkit.toolkit.storage import WEIGHTS

    from slimkit.testing import tiny_state

    state = tiny_state()
    layers = {n: m for n, m in state.model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    from slimkit_magnitude import prune_by_magnitude

    prune_by_magnitude(layers, 0.7, "layer")
    stage = QuantoQuantizer(QuantoQuantizer.Config(bits=8))
    stage.apply(state)
    stage.save(state.model, tmp_path)
    from slimkit.toolkit.storage import untied_state_dict

    save_file(untied_state_dict(state.model), str(tmp_path / "dense.safetensors"))
    sparse_bytes = (tmp_path / WEIGHTS).stat().st_size
    dense_bytes = (tmp_path / "dense.safetensors").stat().st_size
    assert sparse_bytes < dense_bytes, (sparse_bytes, dense_bytes)
    reloaded = QuantoQuantizer.load(tmp_path, {})
    probe = state.data.eval[:1, :32]
    with torch.no_grad():
        diff = (reloaded(input_ids=probe).logits - state.model(input_ids=probe).logits).abs().max().item()
    assert diff < 1e-4
