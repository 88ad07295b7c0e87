"""slimkit's int4 codes (the autoround quantizer's) written into MatMulNBits as they are."""

import functools

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("auto_round")
pytest.importorskip("compressed_tensors")

from slimkit_onnx import MODEL_FILE, OnnxConfig, OnnxExporter
from slimkit_onnx.codes import SCALE_SUFFIX, WEIGHT_SUFFIX, modules_of

from slimkit.evaluation import model_logits
from slimkit.testing import random_token_state

torch.set_num_threads(1)


@functools.cache
def _quantized(**values):
    from slimkit_autoround import AutoRoundConfig, AutoRoundQuantizer

    from slimkit.core.state import PipelineState  # noqa: F401

    state = random_token_state()
    AutoRoundQuantizer(AutoRoundConfig(method="rtn", **values)).apply(state)
    return state


def _export(state, out, **config):
    out.mkdir(parents=True)
    return OnnxExporter(OnnxConfig(**config)).export(out, state.model, state.tokenizer, out)


def _stored_weights(folder):
    """Each builder MatMul's weight as ONNX Runtime computes it: (q - 8) * scale per block."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(folder / MODEL_FILE)).graph.initializer}
    out = {}
    for name, packed in inits.items():
        if name.endswith(WEIGHT_SUFFIX):
            prefix = name[: -len(WEIGHT_SUFFIX)]
            n, blocks, half = packed.shape
            q = np.stack([packed & 15, packed >> 4], -1).reshape(n, blocks * half * 2).astype(np.float32)
            scales = inits[prefix + SCALE_SUFFIX].reshape(n, blocks)
            out[prefix] = torch.from_numpy((q - 8) * np.repeat(scales, half * 2, axis=1))
    return out


def test_int4_codes_are_written_into_matmulnbits_without_requantization(tmp_path):
    state = _quantized(group_size=64, embedding="int4")
    facts = _export(state, tmp_path / "onnx", accuracy_level=0)  # weights=auto: int4 with the codes' grid
    assert facts["format"] == "onnx-int4" and facts["block_size"] == 64
    assert facts["requantized"] is False and facts["carried_tensors"] == 4 * 5 + 1 and facts["requantized_tensors"] == 0
    assert facts["scheme"].startswith("21 MatMulNBits weights slimkit's int4 codes as they are") \
        and "round-to-nearest" not in facts["scheme"] and "accuracy_level=" in facts["scheme"]
    assert "not re-quantized" in facts["notes"]
    modules = dict(state.model.named_modules())
    for prefix, weight in _stored_weights(tmp_path / "onnx").items():
        parts = [modules[m].weight.detach() for m in modules_of(prefix, tied=True)]
        assert torch.equal(weight, torch.cat(parts)), prefix
    # ONNX Runtime's logits (float activations) are the autoround model's
    from slimkit_onnx import OnnxSession

    probe = state.data.eval[:2, :48]
    got = OnnxSession(tmp_path / "onnx").logits(probe)
    assert (got - model_logits(state.model, probe)).abs().max().item() < 1e-4


def test_the_builder_alone_would_not_reproduce_the_codes(tmp_path):
    """The same float weights quantized by the builder (codes dropped) in blocks of 32: its round-to-nearest
    re-derives a scale per half group and moves weights. (In blocks of 64 it happens to reproduce these
    round-to-nearest codes, whose scale is the group's absmax / 7 like the builder's; calibrated codes it would not.)"""
    import copy

    from slimkit.deploy.holdings import INT_WEIGHTS

    state = copy.deepcopy(_quantized(group_size=64, embedding="int4"))
    for module in state.model.modules():
        if hasattr(module, INT_WEIGHTS):
            delattr(module, INT_WEIGHTS)
    facts = _export(state, tmp_path / "onnx", weights="int4", block_size=32, accuracy_level=0)
    assert facts["requantized"] is True and facts["carried_tensors"] == 0
    stored = _stored_weights(tmp_path / "onnx")
    down = state.model.model.layers[0].mlp.down_proj.weight.detach()
    assert not torch.equal(stored["model.layers.0.mlp.down_proj"], down)


@pytest.mark.parametrize("values,reason", [(dict(bits=4, group_size=16, symmetric=True),
                                            "groups of 16 (not whole blocks of 32)"),
                                           (dict(bits=4, group_size=64, symmetric=False), "asymmetric codes"),
                                           (dict(bits=8, group_size=64, symmetric=True), "8-bit codes"),
                                           (None, "float weights")])
def test_codes_matmulnbits_cannot_hold_are_named(values, reason):
    from types import SimpleNamespace

    from slimkit_onnx.codes import why_not_held

    spec = None if values is None else SimpleNamespace(zero_point=None if values["symmetric"] else 0, **values)
    assert reason in why_not_held(spec, 32)


def test_symmetric_int4_in_whole_blocks_is_held():
    from types import SimpleNamespace

    from slimkit_onnx.codes import why_not_held

    spec = SimpleNamespace(bits=4, group_size=64, symmetric=True, zero_point=None)
    assert why_not_held(spec, 64) is None and why_not_held(spec, 32) is None and why_not_held(spec, 128) is not None


def test_builder_names_map_to_transformers_modules():
    assert modules_of("model.layers.3.attn.qkv_proj", tied=True) == [
        "model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.k_proj", "model.layers.3.self_attn.v_proj"]
    assert modules_of("model.layers.0.mlp.down_proj", tied=True) == ["model.layers.0.mlp.down_proj"]
    assert modules_of("lm_head", tied=True) == ["model.embed_tokens"]
    assert modules_of("lm_head", tied=False) == ["lm_head"]
    assert modules_of("model.layers.0.attn.weird.thing", tied=True) is None
