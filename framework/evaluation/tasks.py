"""Task accuracy: few-shot sentiment classification of Rotten Tomatoes review sentences.

Data: the 10,605 movie-review snippets with mean human sentiment (−4..4) from Hutto & Gilbert
(ICWSM 2014), shipped in the ``vaderSentiment==3.3.2`` sdist (MIT). The set-up step downloads the
sdist from PyPI into the cache; nothing is downloaded at run time. Sentences with |score| ≥ 1 are
labelled positive/negative; demonstrations come from the first 1,000 snippets and the evaluated
sentences (balanced) from the rest, so they never overlap.
"""

from __future__ import annotations

import functools
import io
import random
import tarfile
from typing import Any

import torch
from tqdm.auto import tqdm

from slimkit.core.errors import DataError

SDIST = "vaderSentiment-3.3.2.tar.gz"
FETCH_HINT = "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d \"$SLIMKIT_CACHE/sdist\""
LABELS = ("negative", "positive")
DEMO_POOL = 1000


@functools.lru_cache(maxsize=1)
def review_snippets() -> list[tuple[float, str]]:
    """(mean sentiment, sentence) pairs from the vaderSentiment sdist in the cache."""
    from slimkit.core.paths import cache_dir

    path = cache_dir() / "sdist" / SDIST
    if not path.is_file():
        raise DataError(f"the sentiment task needs {path}; the set-up step fetches it with: {FETCH_HINT}")
    with tarfile.open(path) as outer:
        inner_bytes = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        text = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read().decode("utf-8")
    rows = []
    for line in text.splitlines():
        parts = line.strip().split("\t")
        if len(parts) == 3:
            rows.append((float(parts[1]), parts[2].strip()))
    return rows


def sentiment_examples(samples: int = 200, shots: int = 2, seed: int = 0) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(demonstrations, balanced evaluation examples) as (sentence, label) pairs, disjoint."""
    rows = [(s, int(score > 0)) for score, s in review_snippets() if abs(score) >= 1.0 and len(s) < 300]
    pool, rest = rows[:DEMO_POOL], rows[DEMO_POOL:]
    rng = random.Random(seed)
    demos = [rng.choice([r for r in pool if r[1] == label]) for label in (1, 0)][:shots] if shots <= 2 else \
        rng.sample(pool, shots)
    by_label = {label: [r for r in rest if r[1] == label] for label in (0, 1)}
    if samples // 2 > min(len(v) for v in by_label.values()):
        raise DataError(f"eval.task_samples={samples} is more than the balanced set holds")
    chosen = rng.sample(by_label[0], samples // 2) + rng.sample(by_label[1], samples - samples // 2)
    rng.shuffle(chosen)
    return demos, chosen


def _prompt(demos: list[tuple[str, int]], sentence: str) -> str:
    parts = [f"Review: {s}\nSentiment: {LABELS[y]}\n" for s, y in demos]
    return "\n".join(parts + [f"Review: {sentence}\nSentiment:"])


def sentiment_accuracy(model: torch.nn.Module, tokenizer, samples: int = 200, shots: int = 2, seed: int = 0,
                       batch_size: int = 8, desc: str = "sentiment") -> float:
    """Few-shot accuracy: the label whose first token (" negative"/" positive") scores higher wins."""
    demos, examples = sentiment_examples(samples, shots, seed)
    label_ids = [tokenizer(" " + label, add_special_tokens=False)["input_ids"][0] for label in LABELS]
    if label_ids[0] == label_ids[1]:
        raise DataError("the tokenizer gives ' negative' and ' positive' the same first token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    correct = 0
    model.eval()
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, leave=False, unit="batch"):
        batch = examples[start:start + batch_size]
        encoded = [tokenizer(_prompt(demos, s), add_special_tokens=False)["input_ids"] for s, _ in batch]
        length = max(map(len, encoded))
        ids = torch.full((len(batch), length), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(encoded):  # right padding: the last real token predicts the label
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        last = logits[torch.arange(len(batch)), mask.sum(1) - 1][:, label_ids]
        predictions = last.argmax(-1).tolist()
        correct += sum(int(p == y) for p, (_, y) in zip(predictions, batch))
    return correct / len(examples)


TASKS = {"sentiment": sentiment_accuracy}


def task_metrics(model: torch.nn.Module, tokenizer, tasks: list[str], samples: int, label: str = "") -> dict[str, Any]:
    """Run each named task; keys are ``<task>_accuracy``."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise DataError(f"eval.tasks contains {unknown[0]!r}; known tasks: {sorted(TASKS)}")
    return {f"{t}_accuracy": TASKS[t](model, tokenizer, samples=samples, desc=f"{t} [{label}]") for t in tasks}
