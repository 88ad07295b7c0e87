"""Task evaluation through lm-evaluation-harness on the tiny model: the built-in sentiment YAML asks exactly
the built-in scorer's questions, a user's YAML on a user's jsonl scores what a direct computation gives
(also for a bare nn.Module), cloze passages come from held-out text only, hub tasks fail offline with a
clear error before the model loads, and report.json/report.md carry tasks.<name>."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

import slimkit
from slimkit import ConfigError, DataError
from slimkit.data import build_splits
from slimkit.evaluation.tasks import (TaskSet, _prompt, analogy_rows, analogy_sections, cloze_passages,
                                     sentiment_examples)
from slimkit.models import tiny_model, tiny_tokenizer

CHOICES = ["red", "green", "blue"]


def user_task(folder: Path, n: int = 12) -> Path:
    """A multiple-choice task on a user's jsonl (prompt, choices, gold), the YAML beside it with a relative path."""
    rows = [{"prompt": f"Item {i} of the list has the colour", "choices": CHOICES, "gold": i % 3} for i in range(n)]
    (folder / "colours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml = folder / "my_task.yaml"
    yaml.write_text(
        "task: colours\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n  data_files:\n    test: colours.jsonl\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{prompt}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n")
    return yaml


def direct_accuracy(model, tok, rows) -> float:
    """The multiple-choice accuracy computed by hand: sum of continuation log-probs, argmax."""
    correct = 0
    for row in rows:
        scores = []
        for choice in row["choices"]:
            context = tok(row["prompt"], add_special_tokens=False)["input_ids"]
            whole = tok(row["prompt"] + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
            scores.append(sum(logp[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["gold"])
    return correct / len(rows)


class BareModule(torch.nn.Module):
    """A module that is not a PreTrainedModel: no .config, no .device, returns a namespace with logits."""

    def __init__(self, inner):
        super().__init__()
        self.net = inner

    def forward(self, input_ids, **kwargs):
        return types.SimpleNamespace(logits=self.net(input_ids=input_ids).logits)


def test_user_yaml_on_user_jsonl_scores_what_a_direct_computation_gives(tmp_path, monkeypatch):
    yaml = user_task(tmp_path)
    monkeypatch.chdir(tmp_path.parent)  # relative data_files resolve against the YAML's folder, not the cwd
    tasks = TaskSet([str(yaml)])
    assert tasks.info()["colours"]["metric"] == "acc" and tasks.info()["colours"]["source"] == str(yaml.resolve())
    model, tok = tiny_model(seed=3), tiny_tokenizer()
    rows = [json.loads(line) for line in (tmp_path / "colours.jsonl").read_text().splitlines()]
    expected = direct_accuracy(model, tok, rows)
    assert tasks.evaluate(model, tok)["colours"]["acc"] == pytest.approx(expected)
    assert tasks.evaluate(BareModule(model), tok)["colours"]["acc"] == pytest.approx(expected)
    assert tasks.info()["colours"]["samples"] == len(rows)
    assert tasks.evaluate(model, tok, limit=5)["colours"]["acc"] == pytest.approx(direct_accuracy(model, tok, rows[:5]))


def test_sentiment_yaml_asks_the_built_in_scorers_questions():
    from lm_eval.evaluator import evaluate

    from slimkit.evaluation.harness import lm_eval_model, offline

    tasks = TaskSet(["sentiment"])
    tok = tiny_tokenizer()
    with offline():
        out = evaluate(lm_eval_model(tiny_model(), tok), tasks.task_dict, limit=12, log_samples=True)
    demos, examples = sentiment_examples(200)
    samples = sorted(out["samples"]["sentiment"], key=lambda s: s["doc_id"])
    for sample, (sentence, label) in zip(samples, examples[:12]):
        assert sample["doc"] == {"sentence": sentence, "label": label}
        assert [a[0] for a in sample["arguments"]] == [_prompt(demos, sentence)] * 2
        assert [a[1] for a in sample["arguments"]] == [" negative", " positive"]


def test_analogy_rows_are_real_analogies_with_distinct_choices_every_section_in_each_prefix():
    sections = analogy_sections()
    assert len(sections) == 14 and sum(map(len, sections.values())) == 19544  # the Google analogy test set
    rows = analogy_rows()
    assert rows == analogy_rows()  # deterministic
    assert len(rows) == 14 * 150
    assert {r["section"] for r in rows[:14]} == set(sections)
    for row in rows:
        answer = row["choices"][row["label"]]
        assert (row["a"], row["b"], row["c"], answer) in set(sections[row["section"]])
        assert len(set(row["choices"])) == 4 and not {row["a"], row["b"], row["c"]} & set(row["choices"])
        others = {d for *_, d in sections[row["section"]]}
        assert set(row["choices"]) <= others  # distractors are answers of the same section
    assert 0.15 < sum(r["label"] == 0 for r in rows) / len(rows) < 0.35  # the answer's position is shuffled


def test_analogy_yaml_asks_the_analogy_and_scores_what_a_direct_computation_gives():
    from lm_eval.evaluator import evaluate

    from slimkit.evaluation.harness import lm_eval_model, offline

    tasks = TaskSet(["analogy"])
    assert tasks.info()["analogy"]["metric"] == "acc" and tasks.info()["analogy"]["source"] == "built-in"
    model, tok = tiny_model(seed=5), tiny_tokenizer()
    with offline():
        out = evaluate(lm_eval_model(model, tok), tasks.task_dict, limit=14, log_samples=True)
    rows = analogy_rows()[:14]
    samples = sorted(out["samples"]["analogy"], key=lambda s: s["doc_id"])
    for sample, row in zip(samples, rows):
        assert [a[0] for a in sample["arguments"]] == [f"{row['a']} is to {row['b']} as {row['c']} is to"] * 4
        assert [a[1] for a in sample["arguments"]] == [" " + c for c in row["choices"]]
    by_hand = [{"prompt": f"{r['a']} is to {r['b']} as {r['c']} is to", "choices": r["choices"], "gold": r["label"]}
               for r in rows]
    assert out["results"]["analogy"]["acc,none"] == pytest.approx(direct_accuracy(model, tok, by_hand))


def test_cloze_passages_end_in_a_word_and_come_from_held_out_text():
    text = ("half a sentence. The cat sat on the mat and looked at the garden for a long time. "
            "Then it went inside, because the rain had started again.\nShort line.")
    items = cloze_passages(text, min_words=10)
    assert items == [{"context": "half a sentence. The cat sat on the mat and looked at the garden for a long",
                      "target": "time"},
                     {"context": "Then it went inside, because the rain had started", "target": "again"}]
    tok = tiny_tokenizer()
    data = build_splits(tok, seq_len=64, train_tokens=2048, calibration_samples=2, eval_tokens=2048)
    tasks = TaskSet(["cloze"])
    assert tasks.needs_data
    tasks.bind(data, tok)
    docs = list(tasks.task_dict["cloze"].test_docs())
    eval_text = tok.decode(data.eval.flatten().tolist())
    train_text = tok.decode(data.train.flatten().tolist())
    assert len(docs) >= 5
    for doc in docs:
        assert (doc["context"] + " " + doc["target"]) in eval_text
        assert doc["context"][:80] not in train_text
    scores = tasks.evaluate(tiny_model(), tok)["cloze"]
    assert 0.0 <= scores["acc"] <= 1.0 and scores["perplexity"] > 1.0


def test_hub_task_fails_offline_naming_it_and_the_local_way(tmp_path):
    yaml = tmp_path / "hub_task.yaml"
    yaml.write_text("task: hub_only\ndataset_path: some-org/not-cached-here\ntest_split: test\n"
                    "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [a, b]\ndoc_to_target: 0\n")
    with pytest.raises(DataError, match=r"'hub_only' needs the Hugging Face Hub dataset 'some-org/not-cached-here'.*jsonl"):
        TaskSet([str(yaml)])


def test_lm_eval_names_known_unknown_and_not_cached():
    with pytest.raises(DataError, match=r"task 'lambada_openai' needs the Hugging Face Hub dataset "
                                        r"'EleutherAI/lambada_openai'.*task YAML"):
        TaskSet(["lambada_openai"])
    with pytest.raises(ConfigError, match=r"eval.tasks='lambada_opena'.*did you mean .*lambada_openai"):
        TaskSet(["lambada_opena"])
    with pytest.raises(ConfigError, match="no such YAML file"):
        TaskSet(["missing_task.yaml"])


def test_pipeline_reports_tasks_and_refuses_hub_tasks_before_loading(tiny_cfg, tmp_path, monkeypatch):
    yaml = user_task(tmp_path)
    report = slimkit.run(tiny_cfg(f"eval.tasks=[{yaml},cloze]", "data.eval_tokens=2048", "pruner.sparsity=0.5"),
                         tmp_path / "run")
    assert set(report["tasks"]) == {"colours", "cloze"}
    for name, record in report["tasks"].items():
        assert {"metric", "baseline", "final", "retained", "samples", "source"} <= set(record)
        assert record["baseline"] == report["baseline"]["tasks"][name][record["metric"]]
        if record["baseline"]:
            assert record["retained"] == pytest.approx(record["final"] / record["baseline"])
            assert report["ratios"][f"{name}_retained"] == record["retained"]
    text = (tmp_path / "run" / "report.md").read_text()
    assert "colours acc" in text and "| cloze | acc |" in text

    import slimkit.pipeline.runner as runner

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the task error")

    monkeypatch.setattr(runner, "load_model", no_model)
    hub = tmp_path / "hub.yaml"
    hub.write_text("task: hub_only\ndataset_path: some-org/x\ntest_split: test\noutput_type: loglikelihood\n"
                   "doc_to_text: q\ndoc_to_target: a\n")
    with pytest.raises(DataError, match="hub_only"):
        slimkit.run(tiny_cfg(f"eval.tasks=[{hub}]"), tmp_path / "run2")


def test_evaluation_leaves_model_and_tokenizer_as_they_were(tmp_path):
    """lm-eval's HF class would re-tie embeddings and set a pad token; slimkit's objects must not change."""
    model, tok = tiny_model(), tiny_tokenizer()
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach() * 2)  # untied, as after compression
    head = model.lm_head.weight.detach().clone()
    tok.pad_token = None
    TaskSet([str(user_task(tmp_path, 4))]).evaluate(model, tok)
    assert torch.equal(model.lm_head.weight, head)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert tok.pad_token is None
