"""Real text for calibration, training and evaluation, from packages that install offline.

The default source is the English Wikipedia sample shipped in the ``gensim`` wheel (96 articles,
~445k words, CC BY-SA). Token streams are split so the training/calibration slice (from the start)
and the evaluation slice (from the end) never overlap; both are described in the report.
"""

from __future__ import annotations

import array
import bisect
import bz2
import functools
import importlib.resources
import json
import re
import xml.etree.ElementTree as ET
from typing import Any

import torch
from tqdm.auto import tqdm

from slimkit.core.errors import ConfigError, DataError
from slimkit.core.state import DataSplits
from slimkit.data.corpus import Corpus, load_corpus

WIKI_SAMPLE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


@functools.lru_cache(maxsize=1)
def wikipedia_articles() -> list[str]:
    """Plain text of the articles in gensim's Wikipedia sample (markup stripped, cached on disk)."""
    from slimkit.core.paths import cache_dir

    cached = cache_dir() / "data" / "enwiki-sample.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    try:
        import mwparserfromhell
        source = importlib.resources.files("gensim") / WIKI_SAMPLE
    except ImportError as exc:
        raise DataError("the Wikipedia sample needs `pip install gensim==4.4.0 mwparserfromhell`") from exc
    articles = []
    with bz2.open(str(source), "rb") as fh:
        for _, elem in ET.iterparse(fh):
            if elem.tag.endswith("}text") and elem.text and not elem.text.lstrip().upper().startswith("#REDIRECT"):
                text = mwparserfromhell.parse(elem.text).strip_code(normalize=True, collapse=True)
                text = re.sub(r"\n{3,}", "\n\n", text).strip()
                if len(text) > 200:
                    articles.append(text)
            elem.clear()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".partial")
    tmp.write_text(json.dumps(articles))
    tmp.replace(cached)
    return articles


SOURCES = {"wikipedia": (wikipedia_articles, "English Wikipedia sample (2016 dump) shipped in gensim 4.4.0")}




_STREAMS: dict[tuple, tuple[torch.Tensor, list[int]]] = {}
#: the data.path keys (a local corpus); the other data keys size the windows
CORPUS_KEYS = ("path", "format", "field", "split", "chat_template", "response_field")


def corpus_from_config(data: dict[str, Any]) -> Corpus | None:
    """The local corpus ``data.path`` names, read and checked (before the model loads); None for the
    embedded source."""
    if data.get("path"):
        return load_corpus(**{k: data[k] for k in CORPUS_KEYS if k in data})
    defaults = {"format": None, "field": "text", "split": None, "chat_template": False, "response_field": None}
    for key, default in defaults.items():
        if data.get(key, default) != default:
            raise ConfigError(f"data.{key}", data[key], f"{default!r} without data.path",
                              f"it applies to a local corpus; the embedded {data.get('source', 'wikipedia')} sample is used")
    return None


def _special_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """The ids ``tokenizer(text)`` adds before and after a text's own tokens (e.g. a BOS)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []


def tokenize_documents(documents: list[str], tokenizer, key: tuple) -> tuple[torch.Tensor, list[int]]:
    """(token stream as int64, start offset of each document): the documents joined by the EOS token, as
    ``tokenizer(eos.join(documents))`` would give them, tokenized once per process (tests build many splits).
    A few documents at a time and kept as one tensor, not a list of Python ints (~4x smaller for the whole run)."""
    key = (*key, getattr(tokenizer, "name_or_path", ""), len(tokenizer), tokenizer.eos_token)
    if key not in _STREAMS:
        prefix, suffix = _special_wrap(tokenizer)
        separator = [tokenizer.eos_token_id] if tokenizer.eos_token is not None else \
            tokenizer("\n\n", add_special_tokens=False)["input_ids"]
        stream, starts = array.array("q", prefix), []
        batch = 16
        for first in tqdm(range(0, len(documents), batch), desc="tokenizing", unit="batch", leave=False,
                          disable=len(documents) <= batch):
            encoded = tokenizer(documents[first:first + batch], add_special_tokens=False, return_attention_mask=False)
            for i, ids in enumerate(encoded["input_ids"]):
                if first + i:
                    stream.extend(separator)
                starts.append(len(stream))
                stream.extend(ids)
            del encoded
        stream.extend(suffix)
        _STREAMS[key] = (torch.tensor(stream, dtype=torch.long), starts)
    return _STREAMS[key]


def build_splits(tokenizer, source: str = "wikipedia", seq_len: int = 256, train_tokens: int = 32768,
                 calibration_samples: int = 16, eval_tokens: int = 8192, corpus: Corpus | None = None,
                 **corpus_settings: Any) -> DataSplits:
    """Tokenize the text once and cut a head slice (train/calibration) and a tail slice (eval) that
    share no document.

    The text is the embedded ``source``, or the local ``corpus`` (or the one ``corpus_settings`` —
    ``path``, ``format``, ``field``, ... as in ``data.*`` — name). Evaluation windows are the last
    ``eval_tokens`` tokens; training windows the first ``train_tokens``, which must end before the first
    document the evaluation windows touch.
    """
    if corpus is None:
        corpus = corpus_from_config(corpus_settings)
    if corpus is None and source not in SOURCES:
        raise ConfigError("data.source", source, f"one of {sorted(SOURCES)}, or set data.path to a local corpus")
    for key, value in {"data.seq_len": seq_len, "data.train_tokens": train_tokens, "data.eval_tokens": eval_tokens}.items():
        if value < 1:
            raise ConfigError(key, value, "a positive integer")
    if calibration_samples * seq_len > train_tokens:
        raise DataError(f"data.calibration_samples={calibration_samples} windows of {seq_len} tokens need "
                        f"{calibration_samples * seq_len} tokens, more than data.train_tokens={train_tokens}")
    n_train = (train_tokens // seq_len) * seq_len
    n_eval = (eval_tokens // seq_len) * seq_len
    if n_train < seq_len or n_eval < seq_len:
        raise DataError(f"data.train_tokens and data.eval_tokens must each hold at least one window of "
                        f"data.seq_len={seq_len} tokens")
    if corpus is None:
        read, description = SOURCES[source]
        name, documents, key = f"the {source} text", read(), (source,)
    else:
        name, description, key = f"data.path={corpus.path!r}", corpus.description, corpus.key
        documents = corpus.documents(tokenizer)
    ids, starts = tokenize_documents(documents, tokenizer, key)
    total = len(ids)
    if n_train + n_eval > total:
        raise DataError(f"{name} has {total} tokens in {len(starts)} documents, fewer than the requested windows need: "
                        f"data.train_tokens={train_tokens} + data.eval_tokens={eval_tokens} (whole windows of "
                        f"data.seq_len={seq_len}: {n_train} + {n_eval} = {n_train + n_eval} tokens)")
    eval_start = total - n_eval
    first_eval_doc = max(bisect.bisect_right(starts, eval_start) - 1, 0)
    if n_train > starts[first_eval_doc]:
        raise DataError(
            f"{name}: the training windows [0, {n_train}) and the evaluation windows [{eval_start}, {total}) would share "
            f"document {first_eval_doc} of {len(starts)} (it starts at token {starts[first_eval_doc]}); evaluation "
            f"never shares a document with training. Lower data.train_tokens to at most {starts[first_eval_doc]} or "
            f"data.eval_tokens, or add text" + (" (a text file's documents are its blank-line separated paragraphs)"
                                                if len(starts) == 1 else ""))
    stream = ids.clone()  # the windows are views of it: the cached stream stays as tokenized
    train = stream[:n_train].view(-1, seq_len)
    eval_ = stream[eval_start:].view(-1, seq_len)
    info = {
        "source": source if corpus is None else "local", "description": description, "total_tokens": total,
        "seq_len": seq_len,
        "train": {"tokens": f"[0, {n_train})", "windows": train.shape[0],
                  "documents": f"[0, {bisect.bisect_left(starts, n_train)})"},
        "calibration": {"tokens": f"[0, {calibration_samples * seq_len})", "windows": calibration_samples},
        "eval": {"tokens": f"[{eval_start}, {total})", "windows": eval_.shape[0],
                 "documents": f"[{first_eval_doc}, {len(starts)})"},
        "documents": len(starts),
    }
    if corpus is not None:
        info["corpus"] = corpus.info()
    return DataSplits(train, eval_, seq_len, calibration_samples, info)
