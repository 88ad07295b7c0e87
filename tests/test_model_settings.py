"""model.dtype / model.device: refused before the model loads when a backend cannot take them; bfloat16 end to
end; the original model kept only while a stage needs it; peak RSS in the report."""

from __future__ import annotations

import json

import pytest
import torch

import slimkit
from slimkit import ConfigError, Kind, Stage
from slimkit.core.registry import PluginInfo
from slimkit.models import resolve_dtype, tiny_model
from slimkit.pipeline import runner


@pytest.fixture
def no_loading(monkeypatch):
    """Make any model load fail loudly: a refusal must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the config was refused")
    monkeypatch.setattr(runner, "load_model", refuse)


def test_unsupported_dtype_is_refused_before_loading_naming_what_works(tiny_cfg, tmp_path, no_loading):
    with pytest.raises(ConfigError) as info:
        slimkit.run(tiny_cfg("model.dtype=float16", "~pruner", "~quantizer", "distiller=kd"), tmp_path)
    message = str(info.value)
    assert "model.dtype='float16'" in message and "'bfloat16', 'float32'" in message and "'kd'" in message
    assert not (tmp_path / "model").exists()


def test_unknown_dtype_and_device_values_are_refused(tiny_cfg, tmp_path, no_loading):
    with pytest.raises(ConfigError, match=r"model.dtype='float64'.*'auto', 'float32', 'bfloat16', 'float16'"):
        slimkit.run(tiny_cfg("model.dtype=float64"), tmp_path)
    with pytest.raises(ConfigError, match=r"model.device='tpu'.*'cpu', 'cuda', 'auto'"):
        slimkit.run(tiny_cfg("model.device=tpu"), tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused(tiny_cfg, tmp_path, no_loading):
    with pytest.raises(ConfigError, match="model.device='cuda'.*torch sees no CUDA device"):
        slimkit.run(tiny_cfg("model.device=cuda"), tmp_path)


def test_device_a_backend_does_not_support_is_refused_naming_it(tiny_cfg, tmp_path, no_loading, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend a GPU is visible: only the check runs
    with pytest.raises(ConfigError) as info:
        slimkit.run(tiny_cfg("model.device=cuda", "~pruner", "quantizer=int8"), tmp_path)
    assert "model.device='cuda'" in str(info.value) and "'cpu'" in str(info.value) and "'int8'" in str(info.value)


def test_auto_dtype_is_the_checkpoints_own(tmp_path):
    tiny_model(dtype=torch.bfloat16).save_pretrained(tmp_path)
    assert resolve_dtype("auto", "local", str(tmp_path)) == "bfloat16"
    assert resolve_dtype("auto", "tiny") == "float32"
    assert resolve_dtype("float16", "local", str(tmp_path)) == "float16"


@pytest.mark.parametrize("stages, backends", [((), ["magnitude", "quanto"]),      # quanto writes the artifact
                                              (("~quantizer",), ["magnitude"]),  # sparse storage writes it
                                              (("pruner=torch_pruning", "~quantizer"), ["torch_pruning"])])
def test_bfloat16_end_to_end(tiny_cfg, tmp_path, stages, backends):
    report = slimkit.run(tiny_cfg("model.dtype=bfloat16", "eval.latency=false", *stages), tmp_path)
    assert report["model"]["dtype"] == "bfloat16"
    assert [s["backend"] for s in report["stages"]] == backends
    assert report["final"]["reload_max_abs_logit_diff"] <= 1e-3
    reloaded = slimkit.load(report["artifact"])
    floats = {p.dtype for p in reloaded.parameters() if p.is_floating_point()}
    assert floats == {torch.bfloat16}
    # fp32 weights would make the baseline file twice as large as the bf16 one
    assert report["baseline"]["size_bytes"] < 2.2 * report["model"]["parameters"]
    peak = json.loads((tmp_path / "report.json").read_text())["resources"]["peak_rss_bytes"]
    import resource

    assert 50e6 < peak <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Probe(Stage):
    """Records what ``state.reference`` holds when it runs."""

    kind = Kind.PRUNER
    name = "probe"
    seen: list = []

    def apply(self, state):
        devices = {p.device.type for p in state.reference.parameters()}
        same = devices == {"cpu"} and all(torch.equal(a, b) for a, b in zip(
            state.reference.state_dict().values(), tiny_model().state_dict().values()))
        self.seen.append((self.needs_reference, devices, same))
        with torch.no_grad():
            state.model.model.embed_tokens.weight.mul_(0.5)  # change the model: the reference must not follow
        return {}


class _NeedsReference(_Probe):
    needs_reference = True


def test_reference_weights_are_loaded_only_for_stages_that_need_them(tiny_cfg, tmp_path, monkeypatch):
    info = PluginInfo(Kind.PRUNER, "probe", "tests:_Probe", "tests", "0")
    stages = [(_Probe(), info), (_NeedsReference(), info), (_Probe(), info)]
    monkeypatch.setattr(runner, "resolve_stages", lambda settings, registry: stages)
    _Probe.seen.clear()
    slimkit.run(tiny_cfg("eval.latency=false"), tmp_path)
    assert _Probe.seen == [(False, {"meta"}, False),   # no weights held for a stage that does not ask
                           (True, {"cpu"}, True),      # the original's weights, untouched by earlier stages
                           (False, {"meta"}, False)]   # freed again after the last stage that needed them


@pytest.mark.parametrize("scope", ["layer", "row"])
def test_layerwise_magnitude_masks_equal_the_all_at_once_masks(scope):
    from slimkit.testing import random_token_state
    from slimkit_magnitude import MagnitudePruner

    class AllAtOnce(MagnitudePruner):
        layerwise_scores = False

    results = []
    for cls in (MagnitudePruner, AllAtOnce):
        state = random_token_state()
        cls(cls.Config(sparsity=0.3, scope=scope)).apply(state)
        results.append(state.model.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    assert sum(int((v == 0).sum()) for v in results[0].values()) > 0
