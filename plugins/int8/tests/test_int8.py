import copy
import dataclasses
import functools

import pytest
import torch

from slimkit import ConfigError, DataError
from slimkit.evaluation import model_logits
from slimkit.testing import StageContract
from slimkit.testing import tiny_state as _tiny_state
from slimkit_int8 import Int8Config, Int8Linear, Int8Quantizer
from slimkit_int8._smooth import smooth

torch.set_num_threads(1)


@functools.lru_cache(maxsize=1)
def _base_state():
    return _tiny_state()  # tokenizes the Wikipedia sample: build it once per session


def tiny_state():
    """A fresh tiny state (deep copies of the cached model, data and reference)."""
    base = _base_state()
    return dataclasses.replace(base, model=copy.deepcopy(base.model), data=copy.deepcopy(base.data),
                               reference=copy.deepcopy(base.reference), settings=dict(base.settings))


class TestInt8Contract(StageContract):
    stage_cls = Int8Quantizer
    configs = [{}, {"smooth": False}, {"activations": "int8-tensor", "alpha": 0.8},
               {"keep_float": 3, "overrides": {"model.layers.0.*": "float"}},
               {"exclude": ["lm_head"], "embedding": "float"}, {"fuse": False, "embedding": "float"}]
    # the artifact holds the exact int8 codes and scales and the same kernels run on reload, so the
    # logits are reproduced bit for bit up to float reassociation; 1e-4 is the shared default
    reload_atol = 1e-4

    def _state(self):
        return tiny_state()


def _smoothed_pair():
    state = tiny_state()
    # give the float model real activation outliers so smoothing has something to move
    with torch.no_grad():
        for layer in state.model.model.layers:
            layer.input_layernorm.weight[:3] *= 20
            layer.post_attention_layernorm.weight[5:7] *= 15
    before = copy.deepcopy(state.model)
    return state, before


def test_smoothing_preserves_the_float_function():
    state, before = _smoothed_pair()
    metrics = smooth(state.model, state.data.calibration, alpha=0.5)
    assert metrics["smoothed_groups"] == 4 * len(state.model.model.layers)
    probe = state.data.eval[:2, :48]
    ref, out = model_logits(before, probe), model_logits(state.model, probe)
    assert (ref - out).abs().max().item() < 1e-4
    # and it really changed the weights (otherwise this test would prove nothing)
    w0 = before.model.layers[0].self_attn.q_proj.weight
    assert (state.model.model.layers[0].self_attn.q_proj.weight - w0).abs().max() > 1e-3


def test_smoothing_reduces_int8_error_with_outliers():
    from slimkit_int8._smooth import int8_errors

    state, before = _smoothed_pair()
    names = [n for n, m in state.model.named_modules() if n.endswith(("q_proj", "gate_proj"))]
    raw = int8_errors(before, names, state.data.calibration)
    smooth(state.model, state.data.calibration, alpha=0.5)
    smoothed = int8_errors(state.model, names, state.data.calibration)
    assert sum(smoothed.values()) < sum(raw.values())


def test_gqa_v_to_o_fold_is_exact():
    # 4 query heads share 2 KV heads in the tiny model: the V->O fold must tie scales per KV head
    state = tiny_state()
    before = copy.deepcopy(state.model)
    smooth(state.model, state.data.calibration, alpha=0.9)
    probe = state.data.eval[:1, :40]
    assert (model_logits(before, probe) - model_logits(state.model, probe)).abs().max().item() < 1e-4


@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("activations", ["token", "tensor"])
def test_int8_linear_close_to_float(rows, activations):
    torch.manual_seed(rows)
    lin = torch.nn.Linear(96, 48)
    q = Int8Linear.from_float(lin, activations)
    x = torch.randn(2, rows, 96)
    with torch.no_grad():
        ref, out = lin(x), q(x)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert out.shape == ref.shape
    assert rel < 0.03, rel


def test_per_token_scales_beat_per_tensor_on_outlier_tokens():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(16, 64)
    x[3] *= 200  # one loud token
    with torch.no_grad():
        ref = lin(x)
        tok, ten = Int8Linear.from_float(lin, "token")(x), Int8Linear.from_float(lin, "tensor")(x)
    quiet = [i for i in range(16) if i != 3]
    err = lambda y: ((y[quiet] - ref[quiet]).norm() / ref[quiet].norm()).item()
    assert err(tok) < err(ten) / 5


def test_single_row_and_multi_row_kernels_agree():
    torch.manual_seed(1)
    lin = torch.nn.Linear(128, 64)
    q = Int8Linear.from_float(lin)
    x = torch.randn(5, 128)
    with torch.no_grad():
        batch = q(x)
        rows = torch.cat([q(x[i:i + 1]) for i in range(5)])
    assert ((batch - rows).norm() / batch.norm()).item() < 0.02


def test_unsupported_bits_names_allowed_values():
    with pytest.raises(ConfigError, match=r"quantizer.bits=4.*8"):
        Int8Config(bits=4)
    with pytest.raises(ConfigError, match="quantizer.alpha"):
        Int8Config(alpha=1.5)
    with pytest.raises(ConfigError, match="quantizer.activations.*'int8-token'"):
        Int8Config(activations="channel")
    with pytest.raises(ConfigError, match="quantizer.keep_float"):
        Int8Config(keep_float=-1)
    with pytest.raises(ConfigError, match=r"overrides"):
        Int8Config(overrides={"lm_head": 4})


def test_missing_calibration_data_is_an_error():
    state = tiny_state()
    state.data.calibration_samples = 0
    with pytest.raises(DataError, match="calibration"):
        Int8Quantizer(Int8Config()).apply(state)
    with pytest.raises(ConfigError, match="data.calibration_samples"):
        Int8Quantizer(Int8Config()).check_before_load({"data": {"calibration_samples": 0}})
    # without smoothing no calibration is needed
    Int8Quantizer(Int8Config(smooth=False)).apply(state)


def test_keep_float_keeps_the_worst_layers_in_float():
    state = tiny_state()
    metrics = Int8Quantizer(Int8Config(keep_float=2)).apply(state)
    assert len(metrics["kept_float"]) == 2
    for name in metrics["kept_float"]:
        assert type(state.model.get_submodule(name)) is torch.nn.Linear
    assert metrics["precision_counts"]["float32"] == 2


def test_quantized_model_tracks_float_logits():
    state = tiny_state()
    probe = state.data.eval[:2, :48]
    ref = model_logits(state.model, probe)
    Int8Quantizer(Int8Config()).apply(state)
    out = model_logits(state.model, probe)
    assert ((out - ref).norm() / ref.norm()).item() < 0.05


def test_fused_groups_give_the_unfused_logits_in_prefill_and_decode():
    state = tiny_state()
    fused_state = tiny_state()
    Int8Quantizer(Int8Config(fuse=False)).apply(state)
    metrics = Int8Quantizer(Int8Config(fuse=True)).apply(fused_state)
    layers = len(state.model.model.layers)
    assert metrics["fused_groups"] == 2 * layers  # q/k/v and gate/up in every decoder layer
    assert metrics["fused_linears"] == 5 * layers
    attn = fused_state.model.model.layers[0].self_attn
    assert attn.q_proj._group is attn.k_proj._group is attn.v_proj._group is not None
    probe = state.data.eval[:2, :32]
    ref, out = model_logits(state.model, probe), model_logits(fused_state.model, probe)
    assert (ref - out).abs().max().item() < 1e-4
    with torch.no_grad():  # one-row inputs take the fbgemm kernel, fused and alone
        step = probe[:1, :1]
        ref1 = state.model(input_ids=step, use_cache=False).logits
        out1 = fused_state.model(input_ids=step, use_cache=False).logits
    assert (ref1 - out1).abs().max().item() < 1e-4


def test_a_fused_member_called_alone_computes_its_own_output():
    state = tiny_state()
    Int8Quantizer(Int8Config()).apply(state)
    k_proj = state.model.model.layers[0].self_attn.k_proj
    x = torch.randn(5, k_proj.in_features)
    expected = Int8Linear.from_float(torch.nn.Linear(k_proj.in_features, k_proj.out_features, bias=False))
    expected.weight_int8.copy_(k_proj.weight_int8)
    expected.weight_scale.copy_(k_proj.weight_scale)
    assert torch.allclose(k_proj(x), expected(x))  # not the leader: no stale output from an earlier call


def test_int8_embedding_shares_the_tied_lm_head_codes_and_is_stored_once(tmp_path):
    from safetensors import safe_open
    from slimkit.toolkit.storage import WEIGHTS
    from slimkit_int8 import Int8Embedding

    state = tiny_state()
    assert state.model.lm_head.weight is state.model.model.embed_tokens.weight  # the tiny model ties them
    probe = state.data.eval[:2, :32]
    ref = model_logits(state.model, probe)
    stage = Int8Quantizer(Int8Config())
    metrics = stage.apply(state)
    table = state.model.model.embed_tokens
    assert isinstance(table, Int8Embedding) and metrics["embedding"].startswith("int8")
    assert table.weight_int8 is state.model.lm_head.weight_int8
    out = model_logits(state.model, probe)
    assert ((out - ref).norm() / ref.norm()).item() < 0.05
    stage.save(state.model, tmp_path)
    with safe_open(str(tmp_path / WEIGHTS), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight_int8" in keys and "lm_head.weight_int8" not in keys
    loaded = Int8Quantizer.load(tmp_path, {})
    assert loaded.model.embed_tokens.weight_int8 is loaded.lm_head.weight_int8
    assert loaded.model.layers[0].mlp.gate_proj._group is not None  # fusion survives the reload
    assert (model_logits(loaded, probe) - out).abs().max().item() < 1e-5


def test_int8_embedding_with_a_float_tied_lm_head_is_a_config_error():
    state = tiny_state()
    with pytest.raises(ConfigError, match="quantizer.embedding"):
        Int8Quantizer(Int8Config(exclude=["lm_head"])).apply(state)
    with pytest.raises(ConfigError, match="quantizer.embedding"):
        Int8Config(embedding="int4")


def test_parameter_counts_see_the_int8_weights():
    from slimkit.evaluation import nonzero_parameters
    from slimkit.models import count_parameters

    state = tiny_state()
    before = count_parameters(state.model)
    Int8Quantizer(Int8Config()).apply(state)
    assert count_parameters(state.model) == before  # same weights, now int8; the tied table once
    assert nonzero_parameters(state.model) > 0.9 * before
    assert not any(p.requires_grad for p in state.model.parameters() if p.dtype == torch.int8)


def test_reload_names_a_tensor_missing_from_the_artifact(tmp_path):
    from safetensors.torch import load_file, save_file
    from slimkit.core.errors import ArtifactError
    from slimkit.toolkit.storage import WEIGHTS

    state = tiny_state()
    stage = Int8Quantizer(Int8Config())
    stage.apply(state)
    stage.save(state.model, tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS))
    del tensors["model.norm.weight"]  # a float tensor: the skeleton's meta placeholder must not survive
    save_file(tensors, str(tmp_path / WEIGHTS))
    with pytest.raises(ArtifactError, match="model.norm.weight"):
        Int8Quantizer.load(tmp_path, {})


def test_unsigned_token_codes_are_the_signed_codes_plus_128():
    from slimkit_int8._kernels import quantize_tokens

    torch.manual_seed(0)
    x = torch.randn(9, 70) * torch.linspace(0.01, 30, 70)
    x[0] = 0.0  # an all-zero row keeps a positive scale and zero codes
    signed, scale = quantize_tokens(x)
    unsigned, scale_u = quantize_tokens(x, unsigned=True)
    assert signed.dtype == torch.int8 and unsigned.dtype == torch.uint8
    assert torch.equal(unsigned.long(), signed.long() + 128)
    assert torch.equal(scale, scale_u) and bool((scale > 0).all())
    assert int(signed.abs().max()) == 127 and bool((signed[0] == 0).all())
    assert bool(((signed.float() * scale - x).abs() <= scale / 2 + 1e-6).all())  # rounding error per row


@pytest.mark.parametrize("bias", [False, True])
def test_onednn_prefill_kernel_is_bit_identical_to_int_mm(bias):
    from slimkit_int8._kernels import onednn_available

    if not onednn_available():
        pytest.skip("oneDNN's int8 linear is not available in this torch build")
    torch.manual_seed(0)
    module = Int8Linear.from_float(torch.nn.Linear(96, 40, bias=bias))
    x = torch.randn(3, 17, 96) * torch.linspace(0.1, 20, 96)  # uneven channels, several rows
    fast = module(x)
    module.use_onednn = False
    reference = module(x)
    assert module._onednn is not None  # the fast call did go through oneDNN
    assert torch.equal(fast, reference)


def test_a_model_with_packed_kernels_deep_copies_and_still_matches():
    state = tiny_state()
    Int8Quantizer(Int8Config()).apply(state)
    probe = state.data.eval[:2, :16]
    before = model_logits(state.model, probe)  # builds the prepacked copies
    copied = copy.deepcopy(state.model)
    assert torch.equal(model_logits(copied, probe), before)


def test_prefill_kernel_int_mm_keeps_no_onednn_copy_gives_the_same_logits_and_survives_reload(tmp_path):
    fast, lean = tiny_state(), tiny_state()
    Int8Quantizer(Int8Config()).apply(fast)
    stage = Int8Quantizer(Int8Config(prefill_kernel="int_mm"))
    metrics = stage.apply(lean)
    assert metrics["prefill_kernel"] == "int_mm"
    probe = lean.data.eval[:2, :32]
    assert torch.equal(model_logits(lean.model, probe), model_logits(fast.model, probe))
    kernels = [m for m in lean.model.modules() if isinstance(m, Int8Linear)]
    assert all(m._onednn is None and (m._group is None or m._group._onednn is None) for m in kernels)
    stage.save(lean.model, tmp_path)
    reloaded = Int8Quantizer.load(tmp_path, {})
    assert not any(m.use_onednn for m in reloaded.modules() if isinstance(m, Int8Linear))


def test_prefill_kernel_onednn_where_it_is_missing_is_a_config_error(monkeypatch):
    import slimkit_int8

    monkeypatch.setattr(slimkit_int8, "onednn_available", lambda: False)
    with pytest.raises(ConfigError, match="quantizer.prefill_kernel"):
        Int8Config(prefill_kernel="onednn")
    with pytest.raises(ConfigError, match="quantizer.prefill_kernel"):
        Int8Config(prefill_kernel="fast")
