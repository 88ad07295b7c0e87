"""Local corpora (``data.path``) through 🤗 datasets: every source kind, document-level splits, the report's
file hashes, and every bad input failing with a slimkit error before the model loads. Small files made here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import slimkit
from slimkit import ConfigError, DataError
from slimkit.data import build_splits, load_corpus, wikipedia_articles
from slimkit.data.splits import tokenize_documents
from slimkit.models import tiny_tokenizer

WINDOWS = dict(seq_len=32, train_tokens=320, calibration_samples=2, eval_tokens=256)


def documents(n: int = 12, chars: int = 700) -> list[str]:
    """Real prose: slices of Wikipedia articles, one per document (no blank lines inside)."""
    return [" ".join(a[:chars].split()) for a in wikipedia_articles()[20:20 + n]]


def write(path: Path, kind: str, docs: list[str], field: str = "text") -> Path:
    rows = [{field: d, "id": i} for i, d in enumerate(docs)]
    if kind == "text":
        path.write_text("\n\n".join(docs) + "\n")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind in ("csv", "parquet"):
        import pandas as pd

        frame = pd.DataFrame(rows)
        frame.to_csv(path, index=False) if kind == "csv" else frame.to_parquet(path)
    elif kind == "saved":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


SUFFIX = {"text": ".txt", "jsonl": ".jsonl", "json": ".json", "csv": ".csv", "parquet": ".parquet", "saved": ""}


@pytest.mark.parametrize("kind", list(SUFFIX))
def test_every_source_kind_reads_the_same_documents(tmp_path, kind):
    docs = documents()
    path = write(tmp_path / f"corpus{SUFFIX[kind]}", kind, docs)
    corpus = load_corpus(str(path))
    assert corpus.records == docs
    assert corpus.format == ("saved" if kind == "saved" else {"jsonl": "json"}.get(kind, kind))
    files = [f for f in corpus.files if f["path"].endswith((".arrow", SUFFIX[kind] or ".arrow"))]
    assert files and all(f["sha256"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest() for f in files)


def test_format_override_glob_and_saved_dataset_dict(tmp_path):
    import datasets

    docs = documents()
    write(tmp_path / "notes.data", "jsonl", docs, field="body")
    assert load_corpus(str(tmp_path / "notes.data"), format="jsonl", field="body").records == docs
    write(tmp_path / "a.jsonl", "jsonl", docs[:6])
    write(tmp_path / "b.jsonl", "jsonl", docs[6:])
    corpus = load_corpus(str(tmp_path / "*.jsonl"))
    assert corpus.records == docs and [Path(f["path"]).name for f in corpus.files] == ["a.jsonl", "b.jsonl"]
    rows = [{"text": d} for d in docs]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:8]),
                          "test": datasets.Dataset.from_list(rows[8:])}).save_to_disk(str(tmp_path / "dd"))
    assert load_corpus(str(tmp_path / "dd")).records == docs[:8]  # 'train' by default
    assert load_corpus(str(tmp_path / "dd"), split="test").records == docs[8:]
    with pytest.raises(ConfigError, match=r"data.split='dev'.*train, test"):
        load_corpus(str(tmp_path / "dd"), split="dev")


def test_splits_never_share_a_document_and_report_the_files(tmp_path):
    docs = documents()
    path = write(tmp_path / "corpus.jsonl", "jsonl", docs)
    tok = tiny_tokenizer()
    splits = build_splits(tok, path=str(path), **WINDOWS)
    info = splits.info
    assert info["source"] == "local" and info["documents"] == len(docs)
    train_docs_end = int(info["train"]["documents"].split(",")[1].strip(" )"))
    eval_docs_start = int(info["eval"]["documents"].split(",")[0].strip("["))
    assert train_docs_end <= eval_docs_start
    # the evaluation windows are exactly the tail of the evaluation documents' tokens
    tail = tok(tok.eos_token.join(docs[eval_docs_start:]))["input_ids"][-splits.eval.numel():]
    assert splits.eval.flatten().tolist() == tail
    assert info["corpus"]["files"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["corpus"]["field"] == "text" and info["corpus"]["documents"] == len(docs)


def test_document_stream_equals_tokenizing_the_joined_text():
    """The per-document tokenization gives exactly the old joined stream, so the embedded
    Wikipedia sample's windows (and every number measured on them) are unchanged."""
    tok = tiny_tokenizer()
    articles = wikipedia_articles()[:8]
    stream, starts = tokenize_documents(articles, tok, ("test-joined",))
    assert stream.tolist() == tok(tok.eos_token.join(articles))["input_ids"]
    assert starts[0] == 0 and stream[starts[1] - 1] == tok.eos_token_id


def test_chat_template_messages_and_prompt_response(tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    chats = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
             for i in range(3)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    corpus = load_corpus(str(tmp_path / "chat.jsonl"), field="messages", chat_template=True)
    assert corpus.documents(tok)[1] == "<user>question 1\n<assistant>answer 1\n"
    (tmp_path / "pairs.csv").write_text("prompt,response\nhi,hello\nbye,see you\n")
    pairs = load_corpus(str(tmp_path / "pairs.csv"), field="prompt", response_field="response", chat_template=True)
    assert pairs.documents(tok) == ["<user>hi\n<assistant>hello\n", "<user>bye\n<assistant>see you\n"]
    with pytest.raises(ConfigError, match="data.chat_template=True.*no chat template"):
        load_corpus(str(tmp_path / "chat.jsonl"), field="messages", chat_template=True).documents(tiny_tokenizer())


def bad_inputs(tmp_path: Path) -> list[tuple[dict, type, str]]:
    """(data settings, error, message pattern) for every bad input the issue lists, and a few more."""
    write(tmp_path / "ok.jsonl", "jsonl", documents())
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    (tmp_path / "broken.parquet").write_text("not parquet")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": "  "}\n')
    (tmp_path / "notes.docx").write_text("x")
    (tmp_path / "chat.jsonl").write_text(json.dumps({"text": [{"role": "user", "content": "hi"}]}) + "\n")
    (tmp_path / "folder").mkdir()
    return [
        (dict(path=str(tmp_path / "missing.jsonl")), ConfigError, r"data.path=.*missing.jsonl.*no such file"),
        (dict(path=str(tmp_path / "nothing*.jsonl")), ConfigError, "the glob matches no file"),
        (dict(path=str(tmp_path / "folder")), ConfigError, "not written by save_to_disk"),
        (dict(path=str(tmp_path / "notes.docx")), ConfigError, r"data.format=None.*'\.docx'"),
        (dict(path=str(tmp_path / "ok.jsonl"), format="xml"), ConfigError, r"data.format='xml'.*text, json"),
        (dict(path=str(tmp_path / "broken.jsonl")), DataError, r"cannot be read as data.format='json'"),
        (dict(path=str(tmp_path / "broken.parquet")), DataError, r"cannot be read as data.format='parquet'"),
        (dict(path=str(tmp_path / "ok.jsonl"), field="body"), ConfigError, r"data.field='body'.*'text', 'id'"),
        (dict(path=str(tmp_path / "ok.jsonl"), field="id"), ConfigError, "a column of strings"),
        (dict(path=str(tmp_path / "empty.jsonl")), DataError, "empty corpus"),
        (dict(path=str(tmp_path / "blank.jsonl")), DataError, "empty corpus"),
        (dict(path=str(tmp_path / "chat.jsonl")), ConfigError, "data.chat_template=true"),
        (dict(path=str(tmp_path / "ok.jsonl"), response_field="id"), ConfigError, "data.response_field"),
        (dict(field="body"), ConfigError, "data.field='body'.*without data.path"),
    ]


def test_every_bad_input_fails_before_the_model_loads(tiny_cfg, tmp_path, monkeypatch):
    import slimkit.pipeline.runner as runner

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad data input was reported")

    monkeypatch.setattr(runner, "load_model", no_model)
    for settings, error, pattern in bad_inputs(tmp_path):
        overrides = [f"data.{k}={v}" for k, v in settings.items()]
        with pytest.raises(error, match=pattern):
            slimkit.run(tiny_cfg(*overrides), tmp_path / "run")


def test_too_few_tokens_says_how_many_there_are_and_are_needed(tmp_path):
    path = write(tmp_path / "small.jsonl", "jsonl", documents(3, 300))
    with pytest.raises(DataError, match=r"has \d+ tokens in 3 documents.*320 \+ 256 = 576 tokens"):
        build_splits(tiny_tokenizer(), path=str(path), **WINDOWS)
    one = write(tmp_path / "one.txt", "text", [" ".join(documents(4))])
    with pytest.raises(DataError, match="would share document 0 of 1.*blank-line separated"):
        build_splits(tiny_tokenizer(), path=str(one), **WINDOWS)


def test_pipeline_on_a_local_corpus_reports_files_and_ranges(tiny_cfg, tmp_path):
    path = write(tmp_path / "corpus.jsonl", "jsonl", documents(40, 1500), field="body")
    report = slimkit.run(tiny_cfg(f"data.path={path}", "data.field=body", "~pruner"), tmp_path / "run")
    data = report["data"]
    assert data["source"] == "local" and data["corpus"]["files"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["baseline"]["perplexity"] > 1
    text = (tmp_path / "run" / "report.md").read_text()
    assert str(path) in text and data["corpus"]["files"][0]["sha256"] in text and data["eval"]["tokens"] in text
