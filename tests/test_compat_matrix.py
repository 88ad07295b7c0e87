"""The model-family x backend compatibility matrix (see slimkit.testing.compat): every cell either works end
to end through the pipeline's steps (pre-load check -> load -> apply -> save_artifact -> load, identical
logits) or is refused before the weights load with a ConfigError naming the model type, the backend and
what is supported. ~90 cells on tiny models (100-200K parameters), about a minute on 2 busy cores."""

import json
from pathlib import Path

import pytest
import torch

import slimkit
from slimkit.core.errors import ConfigError
from slimkit.testing.compat import BACKENDS, FAMILIES, WORKS, cells, expected, model_type, run_cell, tiny_folder

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


@pytest.mark.parametrize("family, backend", cells(), ids=[f"{f}-{b}".replace(" ", "_") for f, b in cells()])
def test_cell(family, backend, models, tmp_path):
    result = run_cell(family, backend, models, tmp_path)
    assert result["outcome"] == expected(family, backend), result.get("error")
    if result["outcome"] == WORKS:
        assert result["reload_max_abs_logit_diff"] <= 1e-5          # the artifact reloads to the same logits
        assert result["changed_max_abs_logit_diff"] > 1e-6          # and the stage did change the model
    else:
        message = result["error"]
        assert not result["weights_loaded"]                          # refused from config.json alone
        assert f"'{model_type(family)}'" in message                  # names the model type,
        assert BACKENDS[backend].name in message                     # the backend
        assert "llama" in message and "phi3" in message              # and what is supported


def test_refusal_comes_before_the_pipeline_loads_any_weights(models, tmp_path, monkeypatch):
    """slimkit.run with model.path pointing at a family the layout table lacks: the error comes from the
    config alone; load_model is never called."""
    folder = tiny_folder("BLOOM", models)
    called = []
    monkeypatch.setattr("slimkit.pipeline.runner.load_model", lambda *a, **k: called.append(1))
    cfg = {"model": {"name": "x", "path": str(folder)}, "data": {"seq_len": 32}, "eval": {},
           "pipeline": {"order": ["pruner"]}, "pruner": {"backend": "torch_pruning", "sparsity": 0.5}}
    with pytest.raises(ConfigError) as info:
        slimkit.run(cfg, tmp_path)
    assert info.value.key == "pruner" and "'bloom'" in str(info.value)
    assert not called


def test_committed_matrix_matches_the_declared_outcomes():
    """benchmarks/compat_matrix.json (the README's table, written by scripts/compat_matrix.py) holds every
    cell with the outcome this suite asserts."""
    data = json.loads((ROOT / "benchmarks" / "compat_matrix.json").read_text())
    got = {(c["family"], c["backend"]): c["outcome"] for c in data["cells"]}
    assert set(got) == set(cells())
    assert got == {cell: expected(*cell) for cell in cells()}


def test_every_family_of_the_matrix_is_a_distinct_model_type():
    assert len({model_type(f) for f in FAMILIES}) == len(FAMILIES)


def test_a_gpt2_folder_runs_the_whole_pipeline(models, tmp_path, tiny_cfg):
    """slimkit.run on a GPT-2 folder (Conv1D layers): pruned, smoothed and int8-quantized, evaluated, saved,
    reloaded; the report counts Conv1D weights as the model's Linear weights."""
    folder = tiny_folder("GPT-2", models)
    report = slimkit.run(tiny_cfg(f"model.path={folder}", "pruner=magnitude", "pruner.sparsity=0.5", "quantizer=int8",
                                  "eval.latency=false"), tmp_path)
    assert report["model"]["class"] == "GPT2LMHeadModel"
    assert abs(report["final"]["achieved_sparsity"] - 0.5) < 0.01
    assert report["final"]["reload_max_abs_logit_diff"] <= 1e-3
    int8 = report["stages"][-1]["metrics"]
    assert int8["quantized_modules"] == 9 and int8["smoothing"]["smoothed_groups"] == 6   # 8 Conv1D + lm_head
