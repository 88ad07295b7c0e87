"""AutoRound quantizer: bad input before the model loads, the artifact's layout, plain from_pretrained reload,
and the mixed-precision (overrides / budget) paths."""

import builtins
import copy
import functools
import json

import pytest
import torch

pytest.importorskip("auto_round")
pytest.importorskip("compressed_tensors")

from slimkit import ConfigError, DataError, MissingDependencyError  # noqa: E402
from slimkit.evaluation import model_logits  # noqa: E402
from slimkit.models import tiny_model  # noqa: E402
from slimkit.pipeline.runner import save_artifact  # noqa: E402
from slimkit.testing import random_token_state  # noqa: E402
from slimkit_autoround import AutoRoundConfig, AutoRoundQuantizer, read_int_weights, working_group_sizes  # noqa: E402
from slimkit_autoround.layout import ATTRIBUTE, round_to_nearest  # noqa: E402

SETTINGS = {"model": {"name": "tiny"}, "data": {"calibration_samples": 4}}


@functools.lru_cache(maxsize=None)
def _quantized(**values):
    state = random_token_state()
    stage = AutoRoundQuantizer(AutoRoundConfig(**values))
    metrics = stage.apply(state)
    return state, stage, metrics


def quantized(**values):
    state, stage, metrics = _quantized(**values)
    return copy.deepcopy(state), stage, metrics


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [{"method": "signround"}, {"method": "awq"}, {"method": "rtn", "optimized_rtn": True},
                                    {"method": "rtn", "budget_bits": 6.0}])
def test_calibrating_methods_refuse_zero_calibration_samples_before_load(values):
    stage = AutoRoundQuantizer(AutoRoundConfig(**values))
    with pytest.raises(ConfigError) as info:
        stage.check_before_load({"data": {"calibration_samples": 0}})
    assert info.value.key == "data.calibration_samples" and info.value.value == 0
    assert values["method"] in str(info.value)


def test_plain_rtn_runs_without_calibration():
    AutoRoundQuantizer(AutoRoundConfig(method="rtn")).check_before_load({"data": {"calibration_samples": 0}})
    state = random_token_state()
    state.data.calibration_samples = 0
    metrics = AutoRoundQuantizer(AutoRoundConfig(method="rtn")).apply(state)
    assert metrics["calibration_windows"] == 0


def test_empty_calibration_slice_is_a_data_error_in_apply():
    state = random_token_state()
    state.data.calibration_samples = 0
    with pytest.raises(DataError, match="calibration_samples=0"):
        AutoRoundQuantizer(AutoRoundConfig(method="signround", iters=1)).apply(state)


def test_group_size_that_does_not_divide_a_layer_names_it_and_the_sizes_that_work():
    # tiny model: hidden 64, MLP 128 -> every selected layer's input width is 64 or 128
    model = tiny_model()
    stage = AutoRoundQuantizer(AutoRoundConfig(group_size=48))
    with pytest.raises(ConfigError) as info:
        stage._check_model(model)
    message = str(info.value)
    assert info.value.key == "quantizer.group_size" and info.value.value == 48
    assert "model.layers.0.self_attn.q_proj" in message and "input width 64" in message
    assert "8, 16, 24, 32, 40, 48, 56, 64" not in message and "8, 16, 32, 64" in message


def test_a_layer_autoround_would_leave_unquantized_is_refused_before_it_runs():
    """AutoRound keeps, silently, any Linear whose sizes are not multiples of 32 in 16-bit under its default grid
    (e.g. an MLP pruned to 112 channels); slimkit names the layer before AutoRound runs. The gptq grid has no such
    limit."""
    model = tiny_model(intermediate_size=112)
    with pytest.raises(ConfigError) as info:
        AutoRoundQuantizer(AutoRoundConfig(group_size=16))._check_model(model)
    assert info.value.key == "quantizer.include"
    assert "model.layers.0.mlp.gate_proj is 112 x 64" in str(info.value) and "pruner.round_to" in str(info.value)
    AutoRoundQuantizer(AutoRoundConfig(group_size=16, exclude=["lm_head", "*.mlp.*"]))._check_model(model)
    AutoRoundQuantizer(AutoRoundConfig(group_size=16, sym_grid="gptq"))._check_model(model)


def test_group_size_is_checked_before_the_model_loads():
    with pytest.raises(ConfigError, match="quantizer.group_size=48"):
        AutoRoundQuantizer(AutoRoundConfig(group_size=48)).check_before_load(SETTINGS)


def test_embedding_group_size_that_does_not_divide_the_table_names_it_before_load():
    # tiny model: the table is 64 wide; the Linear grid (group_size=32) is fine on its own
    stage = AutoRoundQuantizer(AutoRoundConfig(group_size=32, embedding="int8", embedding_group_size=48))
    with pytest.raises(ConfigError) as info:
        stage.check_before_load(SETTINGS)
    assert info.value.key == "quantizer.embedding_group_size" and info.value.value == 48
    assert "model.embed_tokens" in str(info.value) and "width 64" in str(info.value) and "-1" in str(info.value)
    # an embedding group size frees the table from quantizer.group_size: 40 does not divide 64, only the table sees it
    AutoRoundQuantizer(AutoRoundConfig(group_size=32, embedding="int8", embedding_group_size=-1)).check_before_load(SETTINGS)


def test_working_group_sizes():
    assert working_group_sizes([576, 1536]) == [8, 16, 24, 32, 48, 64, 96, 192]  # SmolLM2: no 128
    assert 128 in working_group_sizes([640, 2048, 1024])  # Gemma-3-270M


def test_tied_lm_head_cannot_be_selected_as_a_linear():
    with pytest.raises(ConfigError, match="quantizer.embedding=int8 or int4"):
        AutoRoundQuantizer(AutoRoundConfig(exclude=[]))._check_model(tiny_model())


@pytest.mark.parametrize("values,key", [({"method": "gptq"}, "quantizer.method"), ({"bits": 5}, "quantizer.bits"),
                                        ({"group_size": 0}, "quantizer.group_size"),
                                        ({"embedding": "int2"}, "quantizer.embedding"),
                                        ({"embedding_group_size": 0}, "quantizer.embedding_group_size"),
                                        ({"embedding_group_size": -2}, "quantizer.embedding_group_size"),
                                        ({"embedding_group_size": "row"}, "quantizer.embedding_group_size"),
                                        ({"method": "signround", "iters": 0}, "quantizer.iters"),
                                        ({"sym_grid": "positive"}, "quantizer.sym_grid"),
                                        ({"sym_grid": "gptq", "sym": False}, "quantizer.sym_grid"),
                                        ({"sym_grid": "gptq", "method": "rtn", "optimized_rtn": True},
                                         "quantizer.optimized_rtn"),
                                        ({"overrides": {"lm_head": 6}}, "quantizer.overrides['lm_head']")])
def test_bad_config_values(values, key):
    with pytest.raises(ConfigError) as info:
        AutoRoundConfig(**values)
    assert info.value.key == key


def test_missing_library_gives_the_install_hint(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "auto_round" or name.startswith("auto_round."):
            raise ImportError("No module named 'auto_round'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(__import__("sys").modules, "auto_round", raising=False)
    with pytest.raises(MissingDependencyError, match="pip install slimkit-autoround"):
        AutoRoundQuantizer.check_dependencies()


# --- what the stage produces ----------------------------------------------------------------------

def test_in_memory_weights_are_codes_times_scales():
    state, _, metrics = quantized(method="signround", iters=10, group_size=32)
    q = state.model.model.layers[1].mlp.down_proj
    spec = getattr(q, ATTRIBUTE)
    assert (spec.bits, spec.group_size, spec.symmetric) == (4, 32, True)
    assert spec.scale.dtype == torch.float16 and spec.scale.shape == (64, 128 // 32)
    assert spec.codes.dtype == torch.int8 and -8 <= spec.codes.min() and spec.codes.max() <= 7
    assert torch.equal(spec.dequantize(), q.weight.detach())
    assert not hasattr(state.model.model.embed_tokens, ATTRIBUTE)  # embedding=float by default
    # codes + fp16 scales over all matrices, the float32 embedding (tied lm_head counted once) included
    assert 4.5 < metrics["stored_bits_per_weight"] < 32


def test_signround_differs_from_round_to_nearest_on_the_same_grid():
    tuned, _, _ = quantized(method="signround", iters=10, group_size=32)
    plain, _, _ = quantized(method="rtn", group_size=32)
    a = getattr(tuned.model.model.layers[0].self_attn.q_proj, ATTRIBUTE).codes
    b = getattr(plain.model.model.layers[0].self_attn.q_proj, ATTRIBUTE).codes
    assert a.shape == b.shape and not torch.equal(a, b)


@pytest.mark.parametrize("method", ["signround", "rtn", "awq"])
def test_gptq_grid_stores_positive_scales_and_reloads(method, tmp_path):
    """sym_grid=gptq: every scale > 0 with codes in [-8, 7] (the full-range default puts a group's largest weight at
    -8, so about half its scales are negative); the artifact reloads to the same logits."""
    extra = {"iters": 10} if method == "signround" else {}
    state, _, metrics = quantized(method=method, group_size=32, sym_grid="gptq", **extra)
    full, _, _ = quantized(method=method, group_size=32, **extra)
    specs = [getattr(m, ATTRIBUTE) for m in state.model.modules() if hasattr(m, ATTRIBUTE)]
    assert specs and all(bool((s.scale > 0).all()) and s.codes.min() >= -8 and s.codes.max() <= 7 for s in specs)
    assert any(bool((getattr(m, ATTRIBUTE).scale < 0).any()) for m in full.model.modules() if hasattr(m, ATTRIBUTE))
    assert all(torch.equal(s.dequantize(), m.weight.detach()) for m in state.model.modules()
               for s in [getattr(m, ATTRIBUTE, None)] if s is not None)
    assert metrics["sym_grid"] == "gptq"
    target = tmp_path / "model"
    save_artifact(state, target, overwrite=False, records=[], model_info={"name": "tiny"})
    probe = state.data.eval[:1, :32]
    reloaded = AutoRoundQuantizer.load(target, {})
    assert (model_logits(reloaded, probe) - model_logits(state.model, probe)).abs().max().item() < 1e-4


def test_int4_embedding_is_shared_with_the_tied_lm_head():
    state, _, _ = quantized(method="rtn", embedding="int4")
    table = state.model.model.embed_tokens
    spec = getattr(table, ATTRIBUTE)
    assert state.model.lm_head.weight is table.weight
    assert torch.equal(spec.dequantize(), table.weight.detach())
    expected = round_to_nearest(spec.dequantize(), 4, 64)
    assert torch.equal(expected.codes, spec.codes)


@pytest.mark.parametrize("size,groups", [(-1, 1), (16, 4)])
def test_embedding_group_size_sets_the_table_scales_only(tmp_path, size, groups):
    """-1: one float16 scale per row of the table (per token); a number: that many columns per scale. The Linear
    layers keep quantizer.group_size, the stored-bits figure counts the table's fewer scales, and the artifact
    reloads to the same codes."""
    state, _, metrics = quantized(method="rtn", group_size=32, embedding="int8", embedding_group_size=size)
    spec = getattr(state.model.model.embed_tokens, ATTRIBUTE)
    assert spec.group_size == 64 // groups and spec.scale.shape == (state.model.config.vocab_size, groups)
    assert torch.equal(spec.codes, round_to_nearest(state.model.model.embed_tokens.weight, 8, 64 // groups).codes)
    assert getattr(state.model.model.layers[0].mlp.up_proj, ATTRIBUTE).group_size == 32
    assert metrics["embedding_group_size"] == size
    default, _, default_metrics = quantized(method="rtn", group_size=32, embedding="int8")
    assert getattr(default.model.model.embed_tokens, ATTRIBUTE).group_size == 32
    assert (metrics["stored_bits_per_weight"] < default_metrics["stored_bits_per_weight"]) == (64 // groups > 32)
    target = tmp_path / "model"
    save_artifact(state, target, overwrite=False, records=[], model_info={"name": "tiny"})
    stored = read_int_weights(target)["model.embed_tokens"]
    assert stored.group_size == spec.group_size and torch.equal(stored.codes, spec.codes)
    assert torch.equal(stored.scale, spec.scale)


def test_default_artifact_reloads_with_plain_from_pretrained(tmp_path):
    """Symmetric codes with the embedding in float (the default): transformers reads it with compressed-tensors."""
    from transformers import AutoModelForCausalLM

    state = random_token_state()
    AutoRoundQuantizer(AutoRoundConfig(method="rtn", overrides={"model.layers.0.*": 8, "model.layers.3.mlp.*": None})
                       ).apply(state)
    target = tmp_path / "model"
    save_artifact(state, target, overwrite=False, records=[], model_info={"name": "tiny"})
    config = json.loads((target / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert "model.layers.3.mlp.down_proj" in config["ignore"]
    probe = state.data.eval[:2, :32]
    plain = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32)
    assert (model_logits(plain, probe) - model_logits(state.model, probe)).abs().max().item() < 1e-4


def test_slimkit_load_and_reader_expose_the_codes(tmp_path):
    """Asymmetric codes and an int8 embedding table (which transformers 5.24 cannot load: see the README)."""
    state = random_token_state()
    stage = AutoRoundQuantizer(AutoRoundConfig(method="rtn", sym=False, embedding="int8",
                                               overrides={"model.layers.0.*": 8, "model.layers.3.mlp.*": None}))
    stage.apply(state)
    target = tmp_path / "model"
    save_artifact(state, target, overwrite=False, records=[], model_info={"name": "tiny"})
    weights = read_int_weights(target)
    memory = {n: getattr(m, ATTRIBUTE) for n, m in state.model.named_modules() if hasattr(m, ATTRIBUTE)}
    assert set(weights) == set(memory) and "model.embed_tokens" in weights
    assert weights["model.layers.0.mlp.up_proj"].bits == 8 and weights["model.layers.1.mlp.up_proj"].bits == 4
    for name, spec in weights.items():
        assert torch.equal(spec.codes, memory[name].codes), name
        assert torch.equal(spec.scale, memory[name].scale), name
        assert (spec.symmetric, memory[name].symmetric) == (name == "model.embed_tokens",) * 2, name
        if not spec.symmetric:
            assert torch.equal(spec.zero_point, memory[name].zero_point), name
    reloaded = stage.load(target, {})
    probe = state.data.eval[:2, :32]
    assert (model_logits(reloaded, probe) - model_logits(state.model, probe)).abs().max().item() < 1e-4
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert torch.equal(getattr(reloaded.model.layers[2].self_attn.o_proj, ATTRIBUTE).codes,
                       memory["model.layers.2.self_attn.o_proj"].codes)
    assert set(reloaded.state_dict()) == set(state.model.state_dict())


def test_budget_bits_mixes_widths_within_the_budget(tmp_path):
    state = random_token_state()
    state.work_dir = tmp_path
    stage = AutoRoundQuantizer(AutoRoundConfig(method="rtn", budget_bits=6.0, budget_candidates=[4, 8]))
    metrics = stage.apply(state)
    widths = {getattr(m, ATTRIBUTE).bits for m in state.model.modules() if hasattr(m, ATTRIBUTE)}
    assert widths == {4, 8}
    assert metrics["budget"]["reached_bits"] <= 6.0


@pytest.mark.parametrize("values", [{"method": "rtn", "optimized_rtn": True}, {"method": "awq"}])
def test_gradient_free_calibrated_methods_store_exactly_what_runs(values, tmp_path):
    """optimized RTN keeps float32 scales inside AutoRound: the stage snaps weights to the float16 grid it stores."""
    state = random_token_state()
    before = state.model.model.layers[0].mlp.up_proj.weight.detach().clone()
    AutoRoundQuantizer(AutoRoundConfig(**values)).apply(state)
    q = state.model.model.layers[0].mlp.up_proj
    spec = getattr(q, ATTRIBUTE)
    assert torch.equal(spec.dequantize(), q.weight.detach()) and not torch.equal(before, q.weight.detach())
    target = tmp_path / "model"
    save_artifact(state, target, overwrite=False, records=[], model_info={"name": "tiny"})
    probe = state.data.eval[:1, :32]
    reloaded = AutoRoundQuantizer.load(target, {})
    assert (model_logits(reloaded, probe) - model_logits(state.model, probe)).abs().max().item() < 1e-4
