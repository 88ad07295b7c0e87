"""Real text for calibration, training and evaluation, from packages that install offline.

The default source is the English Wikipedia sample shipped in the ``gensim`` wheel (96 articles,
~445k words, CC BY-SA). Token streams are split so the training/calibration slice (from the start)
and the evaluation slice (from the end) never overlap; both are described in the report.
"""

from __future__ import annotations

import bz2
import functools
import importlib.resources
import json
import re
import xml.etree.ElementTree as ET

import torch

from slimkit.core.errors import DataError
from slimkit.core.state import DataSplits

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




_STREAMS: dict[tuple, list[int]] = {}


def _token_stream(source: str, tokenizer) -> list[int]:
    """The whole source tokenized once per process and tokenizer (tests build many splits)."""
    key = (source, getattr(tokenizer, "name_or_path", ""), len(tokenizer), tokenizer.eos_token)
    if key not in _STREAMS:
        eos = tokenizer.eos_token or ""
        _STREAMS[key] = tokenizer(eos.join(SOURCES[source][0]()), return_tensors=None)["input_ids"]
    return _STREAMS[key]


def build_splits(tokenizer, source: str = "wikipedia", seq_len: int = 256, train_tokens: int = 32768,
                 calibration_samples: int = 16, eval_tokens: int = 8192) -> DataSplits:
    """Tokenize the source once and cut a head slice (train/calibration) and a tail slice (eval)."""
    if source not in SOURCES:
        raise DataError(f"data.source={source!r} is not known; expected one of {sorted(SOURCES)}")
    for key, value in {"data.seq_len": seq_len, "data.train_tokens": train_tokens, "data.eval_tokens": eval_tokens}.items():
        if value < 1:
            raise DataError(f"{key}={value!r} must be a positive integer")
    if calibration_samples * seq_len > train_tokens:
        raise DataError(f"data.calibration_samples={calibration_samples} windows of {seq_len} tokens need "
                        f"{calibration_samples * seq_len} tokens, more than data.train_tokens={train_tokens}")
    read, description = SOURCES[source]
    ids = _token_stream(source, tokenizer)
    n_train = (train_tokens // seq_len) * seq_len
    n_eval = (eval_tokens // seq_len) * seq_len
    if n_train < seq_len or n_eval < seq_len:
        raise DataError(f"data.train_tokens and data.eval_tokens must each hold at least one window of "
                        f"data.seq_len={seq_len} tokens")
    if n_train + n_eval > len(ids):
        raise DataError(f"the {source} text has {len(ids)} tokens; data.train_tokens={train_tokens} + "
                        f"data.eval_tokens={eval_tokens} do not fit without overlap")
    stream = torch.tensor(ids, dtype=torch.long)
    train = stream[:n_train].view(-1, seq_len)
    eval_start = len(ids) - n_eval
    eval_ = stream[eval_start:].view(-1, seq_len)
    info = {
        "source": source, "description": description, "total_tokens": len(ids), "seq_len": seq_len,
        "train": {"tokens": f"[0, {n_train})", "windows": train.shape[0]},
        "calibration": {"tokens": f"[0, {calibration_samples * seq_len})", "windows": calibration_samples},
        "eval": {"tokens": f"[{eval_start}, {len(ids)})", "windows": eval_.shape[0]},
    }
    return DataSplits(train, eval_, seq_len, calibration_samples, info)
