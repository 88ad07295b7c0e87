"""Deployment: `exporter=` runs exporters after the artifact is saved and measures each export in its runtime."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimkit.core.errors import ArtifactError, ConfigError, MissingDependencyError, UnknownPluginError
from slimkit.core.plugin import Exporter, ExporterConfig, Kind, check_choice
from slimkit.core.registry import Registry
from slimkit.deploy import exporter_nodes, plan_deployments
from slimkit.deploy.evaluate import RuntimeModel
from slimkit.deploy.serving import TorchSession, time_sessions

from .conftest import compose

pytest.importorskip("slimkit_gguf")

DEPLOYMENT_KEYS = {"exporter", "runtime", "runtime_version", "format", "path", "size_bytes", "perplexity", "tasks",
                   "prefill_speedup", "decode_speedup", "processes"}


def slimkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimkit", *args], capture_output=True, text=True, timeout=900)


def test_cli_experiment_tiny_exporter_gguf_runs_as_written(tmp_path):
    result = slimkit("experiment=tiny", "exporter=gguf", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    (entry,) = report["deployments"]
    assert DEPLOYMENT_KEYS <= set(entry)
    assert entry["exporter"] == "gguf" and entry["runtime"] in ("llama.cpp", "transformers-gguf")
    assert entry["path"] == str(tmp_path / "deploy" / "gguf") and (tmp_path / "deploy" / "gguf" / "model.gguf").is_file()
    assert entry["size_bytes"] == (tmp_path / "deploy" / "gguf" / "model.gguf").stat().st_size
    # the default recipe's quanto int8 weights, dequantized exactly: the export scores what the artifact scores
    assert entry["format"] == "gguf F32" and entry["requantized"] is False
    assert entry["perplexity"] == pytest.approx(report["final"]["perplexity"], rel=1e-3)
    assert len(entry["processes"]) == 1 and entry["prefill_speedup"] > 0
    # a tiny model's 3 decode steps can vanish in the noise: then the ratio is None, never NaN or a guess
    assert entry["decode_speedup"] is None or entry["decode_speedup"] > 0
    assert "## Deployments" in (tmp_path / "report.md").read_text()
    assert not list((tmp_path / "deploy").glob(".*")), "no partial folders left behind"


def test_tasks_are_measured_through_the_runtime(tmp_path):
    cfg = compose("experiment=tiny", "~pruner", "~quantizer", "exporter=gguf", "exporter.gguf.weights=q8_0",
                  "eval.tasks=[sentiment]", "eval.task_samples=8", "eval.latency=false")
    import slimkit

    report = slimkit.run(cfg, tmp_path)
    (entry,) = report["deployments"]
    task = entry["tasks"]["sentiment"]
    assert 0 <= task["final"] <= 1
    assert task["retained"] == pytest.approx(task["final"] / report["tasks"]["sentiment"]["baseline"])
    assert entry["format"] == "gguf Q8_0" and entry["requantized"] is True
    assert entry["prefill_speedup"] is None and entry["processes"] == []
    # Q8_0 of a float model: close to the model's own perplexity, not equal
    assert entry["perplexity"] == pytest.approx(report["final"]["perplexity"], rel=0.05)
    assert entry["perplexity"] != report["final"]["perplexity"]


def test_runtime_model_refuses_left_padding():
    model = RuntimeModel(TorchSession(_tiny()))
    ids = torch.zeros(2, 6, dtype=torch.long)
    assert model(input_ids=ids, attention_mask=torch.tensor([[1] * 6, [1] * 4 + [0] * 2])).logits.shape == (2, 6, 512)
    with pytest.raises(Exception, match="right-padded"):
        model(input_ids=ids, attention_mask=torch.tensor([[1] * 6, [0] * 2 + [1] * 4]))


def test_speed_timing_alternates_and_reports_medians():
    session = TorchSession(_tiny())
    prompt = torch.randint(0, 512, (1, 16))
    out = time_sessions({"a": session, "b": session}, prompt, repeats=2, decode_tokens=4)
    assert set(out) == {"a", "b"} and all(v["prefill_ms"] > 0 for v in out.values())
    assert all(v["decode_tokens_per_s"] is None or v["decode_tokens_per_s"] > 0 for v in out.values())
    assert session.generate(prompt, 3) == _greedy(session.model, prompt, 3)


def _tiny():
    from slimkit.models import tiny_model

    return tiny_model()


def _greedy(model, prompt, n):
    ids, out = prompt, []
    with torch.no_grad():
        for _ in range(n):
            token = model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
            out.append(int(token))
            ids = torch.cat([ids, token], 1)
    return out


# --- configuration: one name or a list, exporter.<name> nodes ------------------------------------

def test_exporter_group_composes_one_or_a_list():
    assert exporter_nodes(compose("experiment=tiny")) == []
    single = compose("experiment=tiny", "exporter=gguf", "exporter.gguf.weights=q4_0")
    assert [(k, dict(n)) for k, n in exporter_nodes(single)] == [
        ("exporter.gguf", {"backend": "gguf", "weights": "q4_0", "embeddings": "auto"})]
    listed = compose("experiment=tiny", "exporter=[gguf]")
    assert [k for k, _ in exporter_nodes(listed)] == ["exporter.gguf"]
    assert [k for k, _ in exporter_nodes({"exporter": {"backend": "gguf"}})] == ["exporter"]
    assert [k for k, _ in exporter_nodes({"exporter": [{"backend": "gguf"}]})] == ["exporter.0"]


def test_typo_in_an_exporter_key_is_a_hydra_error():
    with pytest.raises(Exception, match="weight"):
        compose("experiment=tiny", "exporter=gguf", "exporter.gguf.weight=q4_0")


# --- bad input: slimkit errors before any model loads ---------------------------------------------

@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the pipeline gets as far as loading the model."""
    import slimkit.pipeline.runner as runner

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(runner, "load_model", refuse)


def test_unknown_exporter_on_the_command_line(tmp_path):
    result = slimkit("experiment=tiny", "exporter=ggufx", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and "exporter='ggufx'" in result.stderr and "gguf" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_exporter_in_a_config(tmp_path, no_model_load):
    import slimkit

    cfg = compose("experiment=tiny")
    settings = {**_plain(cfg), "exporter": {"backend": "nope"}}
    with pytest.raises(UnknownPluginError, match="exporter='nope'"):
        slimkit.run(settings, tmp_path)


def test_bad_weight_format_is_reported_before_the_model_loads(tmp_path, no_model_load):
    import slimkit

    with pytest.raises(ConfigError, match="exporter.gguf.weights='q3_k'"):
        slimkit.run(compose("experiment=tiny", "exporter=gguf", "exporter.gguf.weights=q3_k"), tmp_path)
    assert not (tmp_path / "model").exists()


def test_bnb_artifact_to_gguf_names_the_combination_before_load(tmp_path, no_model_load):
    import slimkit

    try:
        from slimkit.core.registry import default_registry

        default_registry().get(Kind.QUANTIZER, "bnb").check_dependencies()
    except Exception as exc:  # bitsandbytes missing: its own MissingDependencyError comes first
        pytest.skip(f"bnb not usable here: {exc}")
    with pytest.raises(ConfigError, match="quantizer=bnb") as err:
        slimkit.run(compose("experiment=tiny", "~pruner", "quantizer=bnb_nf4", "exporter=gguf"), tmp_path)
    assert "~quantizer" in str(err.value) and "exporter=onnx" in str(err.value)


def test_unsupported_model_type_is_reported_before_the_model_loads(tmp_path, no_model_load):
    from transformers import GPT2Config

    import slimkit

    folder = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64).save_pretrained(folder)
    cfg = compose("experiment=tiny", "~pruner", "~quantizer", "exporter=gguf", f"model.path={folder}")
    with pytest.raises(ConfigError, match="'gpt2' is not mapped to GGUF"):
        slimkit.run(cfg, tmp_path / "out")


def test_existing_deploy_folder_is_not_overwritten(tmp_path, no_model_load):
    import slimkit

    (tmp_path / "deploy" / "gguf").mkdir(parents=True)
    with pytest.raises(ArtifactError, match="already exists"):
        slimkit.run(compose("experiment=tiny", "exporter=gguf"), tmp_path)


class _FakeConfig(ExporterConfig):
    pass


class MissingRuntimeExporter(Exporter):
    name = "needsruntime"
    runtime = "some-runtime"
    requires = {"slimkit_no_such_runtime_xyz": "pip install some-runtime"}


class EchoExporter(Exporter):
    """A second exporter (PyTorch safetensors), to run a list of exporters."""

    name = "echo"
    runtime = "pytorch"

    def export(self, artifact_dir, model, tokenizer, out_dir):
        model.save_pretrained(out_dir, safe_serialization=True)
        return {"format": "safetensors", "requantized": False, "notes": "test"}

    @classmethod
    def open(cls, out_dir, threads=1):
        from slimkit.core.artifact import load_pretrained

        return TorchSession(load_pretrained(out_dir))


def _registry(*extra: type[Exporter]) -> Registry:
    def entry_points(group):
        eps = list(md.entry_points(group=group))
        if group == Kind.EXPORTER.entry_point_group:
            eps += [md.EntryPoint(cls.name, f"{__name__}:{cls.__name__}", group) for cls in extra]
        return eps

    return Registry(entry_points)


def test_missing_runtime_gives_the_install_hint_before_load(tmp_path, no_model_load):
    import slimkit

    settings = {**_plain(compose("experiment=tiny")), "exporter": {"needsruntime": {"backend": "needsruntime"}}}
    with pytest.raises(MissingDependencyError, match="pip install some-runtime"):
        slimkit.run(settings, tmp_path, registry=_registry(MissingRuntimeExporter))


def test_a_list_of_exporters_each_gets_its_folder_and_entry(tmp_path):
    import slimkit

    settings = _plain(compose("experiment=tiny", "~pruner", "~quantizer", "exporter=gguf", "eval.latency=false"))
    settings["exporter"]["echo"] = {"backend": "echo"}
    report = slimkit.run(settings, tmp_path, registry=_registry(EchoExporter))
    assert [d["exporter"] for d in report["deployments"]] == ["gguf", "echo"]
    gguf, echo = report["deployments"]
    assert (tmp_path / "deploy" / "echo" / "model.safetensors").is_file()
    # both carry the float model through: the runtime's perplexity is the model's
    for entry in (gguf, echo):
        assert entry["perplexity"] == pytest.approx(report["final"]["perplexity"], rel=1e-4)


def test_duplicate_exporters_are_refused():
    with pytest.raises(ConfigError, match="at most once"):
        plan_deployments({"exporter": [{"backend": "gguf"}, {"backend": "gguf"}]}, _registry())


def _plain(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


# --- sweeps: exporter= is an axis; the table carries each job's deployments ------------------------

def test_sweep_csv_has_exporter_and_deployments_columns(tmp_path):
    import csv

    from slimkit.sweeps import write_sweep_report

    job = tmp_path / "exporter=gguf"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- exporter=gguf\n")
    report = {"model": {"name": "tiny"}, "stages": [], "baseline": {"perplexity": 10.0, "size_bytes": 100},
              "final": {"perplexity": 10.0, "size_bytes": 100}, "ratios": {},
              "deployments": [{"exporter": "gguf", "runtime": "llama.cpp", "format": "gguf Q4_0", "size_bytes": 30,
                               "perplexity": 11.0, "perplexity_ratio": 1.1, "tasks": {"sentiment": {"final": 0.7}},
                               "prefill_speedup": 1.2, "decode_speedup": 8.0, "processes": []}]}
    (job / "report.json").write_text(json.dumps(report))
    write_sweep_report(tmp_path)
    (row,) = csv.DictReader((tmp_path / "sweep.csv").open())
    assert row["exporter"] == "gguf"
    (dep,) = json.loads(row["deployments"])
    assert dep["format"] == "gguf Q4_0" and dep["decode_speedup"] == 8.0 and dep["tasks"] == {"sentiment": 0.7}


def test_a_bad_exporter_sweep_value_fails_before_any_job_launches():
    from slimkit.pipeline.config import register_configs
    from slimkit.sweeps import SweepError, validate_sweep

    register_configs()
    with pytest.raises(SweepError, match="exporter.gguf.weights=q3"):
        validate_sweep(["-m", "experiment=tiny", "exporter=gguf", "exporter.gguf.weights=q8_0,q3"])
