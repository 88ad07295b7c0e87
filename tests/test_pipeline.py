"""The pipeline end to end on the tiny model: report, artifact, reload, and what it refuses to do."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import slimkit
from slimkit import ArtifactError, MissingDependencyError, ModelLoadError, StageOrderError, default_registry
from slimkit.core.artifact import MANIFEST
from slimkit.evaluation import model_logits


def test_report_has_every_promised_field(tiny_cfg, tmp_path):
    report = slimkit.run(tiny_cfg("pruner.sparsity=0.5", "quantizer.bits=8"), tmp_path)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["ratios"] == pytest.approx(report["ratios"])
    assert {"name", "path", "provenance", "parameters"} <= set(report["model"])
    assert {"eval", "calibration", "train"} <= set(report["data"])
    assert [s["kind"] for s in report["stages"]] == ["pruner", "quantizer"]
    for stage in report["stages"]:
        assert {"kind", "backend", "distribution", "version", "config", "metrics", "seconds"} <= set(stage)
    for metrics in (report["baseline"], report["final"]):
        assert {"perplexity", "size_bytes", "parameters", "nonzero_parameters", "prefill_ms",
                "decode_tokens_per_s", "threads"} <= set(metrics)
    assert set(report["ratios"]) >= {"size", "speed", "perplexity"}
    assert report["stages"][0]["metrics"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert report["final"]["nonzero_parameters"] < report["baseline"]["nonzero_parameters"]
    assert report["ratios"]["size"] == pytest.approx(report["baseline"]["size_bytes"] / report["final"]["size_bytes"])
    assert (tmp_path / "report.md").read_text().startswith("# slimkit report")


def test_artifact_reloads_to_the_same_logits(tiny_cfg, tmp_path):
    report = slimkit.run(tiny_cfg("quantizer.bits=4"), tmp_path)
    model = slimkit.load(report["artifact"])
    again = slimkit.load(report["artifact"])
    probe = torch.randint(0, model.config.vocab_size, (1, 16))
    assert torch.equal(model_logits(model, probe), model_logits(again, probe))
    assert report["final"]["reload_max_abs_logit_diff"] <= 1e-4
    manifest = json.loads((Path(report["artifact"]) / MANIFEST).read_text())
    assert manifest["writer"]["backend"] == "quanto"


def test_float_artifact_loads_with_plain_from_pretrained(tiny_cfg, tmp_path):
    from transformers import AutoModelForCausalLM

    report = slimkit.run(tiny_cfg("~quantizer", "pruner=random"), tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(report["artifact"])
    ours = slimkit.load(report["artifact"])
    probe = torch.randint(0, 100, (1, 12))
    assert torch.equal(model_logits(plain, probe), model_logits(ours, probe))


def test_existing_artifact_is_never_overwritten(tiny_cfg, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="already exists"):
        slimkit.run(tiny_cfg(), tmp_path)
    assert (tmp_path / "model" / "keep.txt").read_text() == "precious"


def test_overwrite_replaces_only_when_asked(tiny_cfg, tmp_path):
    (tmp_path / "model").mkdir()
    report = slimkit.run(tiny_cfg("output.overwrite=true"), tmp_path)
    assert (Path(report["artifact"]) / MANIFEST).is_file()


def test_interrupt_during_save_leaves_no_complete_looking_artifact(tiny_cfg, tmp_path, monkeypatch):
    cls = default_registry().get("quantizer", "quanto")
    real_save = cls.save

    def save_then_interrupt(self, model, directory):
        real_save(self, model, directory)  # the weights are written...
        raise KeyboardInterrupt  # ...and the user presses Ctrl-C before the manifest

    monkeypatch.setattr(cls, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        slimkit.run(tiny_cfg(), tmp_path)
    assert not (tmp_path / "model").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")], "partial folder left behind"
    with pytest.raises(ArtifactError):
        slimkit.load(tmp_path / "model")


def test_folder_without_manifest_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="not a complete slimkit artifact"):
        slimkit.load(tmp_path)


def test_missing_model_folder(tiny_cfg, tmp_path):
    with pytest.raises(ModelLoadError, match="is not a folder"):
        slimkit.run(tiny_cfg(f"model.path={tmp_path / 'nope'}"), tmp_path / "out")


def test_corrupt_model_folder_and_input_left_untouched(tiny_cfg, tmp_path):
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    before = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    with pytest.raises(ModelLoadError, match="broken-model"):
        slimkit.run(tiny_cfg(f"model.path={folder}"), tmp_path / "out")
    assert hashlib.sha256((folder / "config.json").read_bytes()).hexdigest() == before
    assert not (tmp_path / "out" / "model").exists()


def test_missing_dependency_fails_before_the_model_loads(tiny_cfg, tmp_path, monkeypatch):
    cls = default_registry().get("quantizer", "quanto")
    monkeypatch.setattr(cls, "requires", {"optimum_quanto_is_not_installed": "pip install optimum-quanto"})
    loaded = []
    monkeypatch.setattr("slimkit.pipeline.runner.load_model", lambda *a, **k: loaded.append(1))
    with pytest.raises(MissingDependencyError) as err:
        slimkit.run(tiny_cfg(), tmp_path)
    assert "pip install optimum-quanto" in str(err.value) and "'quanto'" in str(err.value)
    assert not loaded


def test_quantizing_before_pruning_is_refused_with_the_reason(tiny_cfg, tmp_path):
    with pytest.raises(StageOrderError, match="quantizer last"):
        slimkit.run(tiny_cfg("pipeline.order=[quantizer,pruner]"), tmp_path)


def test_unknown_stage_kind_in_order(tiny_cfg, tmp_path):
    with pytest.raises(slimkit.ConfigError, match="pipeline.order"):
        slimkit.run(tiny_cfg("pipeline.order=[pruner,compiler]"), tmp_path)


def test_latency_compares_baseline_and_final_with_pinned_threads(tiny_cfg, tmp_path):
    report = slimkit.run(tiny_cfg("eval.threads=1", "eval.repeats=2"), tmp_path)
    for metrics in (report["baseline"], report["final"]):
        assert metrics["threads"] == 1 and metrics["prefill_ms"] > 0 and metrics["decode_tokens_per_s"] > 0
    assert torch.get_num_threads() >= 1


def test_hub_id_offline_says_so(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline"):
        slimkit.run(tiny_cfg("model.name=some-org/some-model"), tmp_path)


def test_unknown_model_name_lists_choices(tiny_cfg, tmp_path):
    with pytest.raises(slimkit.ConfigError, match="model.name.*smollm2-135m"):
        slimkit.run(tiny_cfg("model.name=smollm3"), tmp_path)


def test_plain_from_pretrained_refuses_a_backend_format_artifact(tiny_cfg, tmp_path):
    from transformers import AutoModelForCausalLM

    report = slimkit.run(tiny_cfg(), tmp_path)  # quanto int8: its own weights format
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(report["artifact"])
    assert slimkit.load(report["artifact"]) is not None


# --- the plugin contract as the pipeline enforces it (example third-party plugins only) ------------------

def test_achieved_sparsity_bits_per_weight_and_timing_condition_in_the_report(tiny_cfg, tmp_path):
    report = slimkit.run(tiny_cfg("pruner=random", "pruner.sparsity=0.5", "quantizer=rtn", "quantizer.bits=4",
                                  "eval.latency_condition=serving", "eval.latency_processes=1"), tmp_path)
    final = report["final"]
    # random pruning of the selected Linear weights (all but lm_head, which is tied): half of them
    assert final["achieved_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert final["bits_per_weight"] == pytest.approx(8 * final["size_bytes"] / report["model"]["parameters"])
    timing = report["timing"]
    assert timing["condition"] == "serving" and timing["processes"] == 1
    assert timing["top1_agreement"] > 0.5                      # the timed artifact is the model, not garbage
    assert "in_process" not in timing  # the run's own process never held the original beside the artifact
    assert report["ratios"]["speed"] == pytest.approx(timing["decode_speedup"]["median"])
    assert "fresh processes" in (tmp_path / "report.md").read_text()


def test_in_process_timing_is_labelled(tiny_cfg, tmp_path):
    report = slimkit.run(tiny_cfg("pruner=random", "~quantizer", "eval.latency_condition=in_process"), tmp_path)
    assert report["timing"]["condition"] == "in_process" and report["timing"]["processes"] == 0
    assert {"prefill_speedup", "decode_speedup"} <= set(report["timing"])


@pytest.mark.parametrize("override, key", [
    ("quantizer.include=[model.blocks.*]", "quantizer.include"),
    ("quantizer.exclude=[lm_head,nothing.here]", "quantizer.exclude"),
    ("++quantizer.overrides={model.blocks.0.*:8}", "quantizer.overrides"),
    ("pruner.include=[*.nope]", "pruner.include"),
    ("eval.latency_condition=warm", "eval.latency_condition"),
])
def test_globs_and_eval_settings_are_checked_before_the_model_loads(tiny_cfg, tmp_path, monkeypatch, override, key):
    from slimkit import ConfigError
    from slimkit.pipeline import runner

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the config error")

    monkeypatch.setattr(runner, "load_model", no_model)
    with pytest.raises(ConfigError) as info:
        slimkit.run(tiny_cfg("pruner=random", "quantizer=rtn", override), tmp_path)
    assert info.value.key == key
    assert not (tmp_path / "model").exists()


def test_artifact_of_an_uninstalled_plugin_names_the_distribution_that_wrote_it(tiny_cfg, tmp_path):
    report = slimkit.run(tiny_cfg("pruner=random", "quantizer=rtn", "eval.latency=false"), tmp_path)
    manifest_path = Path(report["artifact"]) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["writer"] = {"kind": "quantizer", "backend": "vanished", "distribution": "acme-slimkit-vanished",
                          "version": "2.1.0"}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="acme-slimkit-vanished 2.1.0") as info:
        slimkit.load(report["artifact"])
    assert "pip install slimkit-vanished" not in str(info.value)


def test_unfaithful_save_fails_the_run_and_leaves_no_model_folder(tiny_cfg, tmp_path, monkeypatch):
    from slimkit_example_random import RoundToNearest

    def forgets_writer(self, state):  # changes how the model computes, in a way save_pretrained does not write
        state.model.lm_head.register_forward_hook(lambda module, args, out: out * 0.5)
        return {}

    monkeypatch.setattr(RoundToNearest, "apply", forgets_writer)
    with pytest.raises(ArtifactError, match="not a faithful save"):
        slimkit.run(tiny_cfg("~pruner", "quantizer=rtn", "eval.latency=false"), tmp_path)
    assert not (tmp_path / "model").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]
