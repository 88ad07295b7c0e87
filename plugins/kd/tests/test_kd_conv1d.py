"""Quantization-aware distillation on GPT-2: its Conv1D layers are fake-quantized too (quanto only knows
nn.Linear) and come back as Conv1D holding the trained weights, so save_pretrained/from_pretrained still work."""

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from slimkit.testing.compat import tiny_family_model
from slimkit.toolkit.modules import weight_matrix

pytest.importorskip("optimum.quanto")
torch.set_num_threads(1)

NAMES = [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def test_qat_fake_quantizes_conv1d_and_gives_conv1d_back():
    from optimum.quanto.nn import QLinear

    from slimkit_kd.qat import disable_qat, enable_qat

    model = tiny_family_model("GPT-2")
    ids = torch.randint(0, 512, (2, 16))
    float_logits = model(input_ids=ids).logits
    assert enable_qat(model, 4, ["lm_head"]) == len(NAMES)
    assert all(isinstance(model.get_submodule(n), QLinear) for n in NAMES)
    assert not torch.allclose(model(input_ids=ids).logits, float_logits, atol=1e-3)  # int4 weights in the forward
    with torch.no_grad():  # stands for training: the float weights behind the fake quantization move
        for n in NAMES:
            model.get_submodule(n).weight.add_(0.01)
    trained = {n: model.get_submodule(n).weight.detach().clone() for n in NAMES}   # [out, in]
    assert disable_qat(model) == len(NAMES)
    for n in NAMES:
        module = model.get_submodule(n)
        assert type(module) is Conv1D and torch.equal(weight_matrix(module), trained[n])
