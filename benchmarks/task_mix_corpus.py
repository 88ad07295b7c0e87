"""Write a distillation corpus that mixes a task's prompts into the embedded Wikipedia text (a user's own data).

A user who distils for a task distils on text like the prompts their app sends. This script writes such a corpus
for slimkit's built-in sentiment task, as a JSON-lines file for ``data.path``:

* first, ``--prompts`` task prompts: the task's own 2-shot template (its two demonstrations, then ``Review: <sentence>
  \\nSentiment:``) around review sentences **the task never scores** — the sentences outside the balanced pool it
  draws its test rows from (the demonstration pool and the sentences of mild or long sentiment), so no evaluated
  sentence is seen in training at any ``eval.task_samples``. **No label is written**: the student learns the
  teacher's answer distribution (pure KL), not the human labels;
* then every Wikipedia article of the embedded sample in its order, so the last ``data.eval_tokens`` tokens (the
  perplexity and cloze slice) are the same text as with ``data.source=wikipedia``.

With ``data.train_tokens=65536`` and ``data.seq_len=128`` the training windows are the prompts (~31k tokens for 360
prompts) followed by the head of Wikipedia.

    python benchmarks/task_mix_corpus.py --out runs/sentiment_mix.jsonl --prompts 360
    slimkit experiment=case_study_mobile_openvino data.path=runs/sentiment_mix.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def never_scored(seed: int = 0) -> tuple[list[tuple[str, int]], list[str]]:
    """(the task's demonstrations, review sentences its test rows can never contain)."""
    from slimkit.evaluation import tasks

    scorable = {s for s, _ in tasks.labelled_snippets()[tasks.DEMO_POOL:]}  # every test row comes from these
    demos, _ = tasks.sentiment_examples(200, 2, seed)
    excluded = scorable | {s for s, _ in demos}
    return demos, [s for _, s in tasks.review_snippets() if s not in excluded]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the .jsonl file to write (one {'text': ...} per document)")
    parser.add_argument("--prompts", type=int, default=360, help="task prompts before the Wikipedia text")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from slimkit.data.splits import wikipedia_articles
    from slimkit.evaluation.tasks import _prompt

    demos, pool = never_scored(args.seed)
    if args.prompts > len(pool):
        raise SystemExit(f"--prompts={args.prompts}: only {len(pool)} never-scored sentences")
    sentences = random.Random(args.seed).sample(pool, args.prompts)
    documents = [_prompt(demos, s) for s in sentences] + wikipedia_articles()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    with open(tmp, "w") as fh:
        for text in documents:
            fh.write(json.dumps({"text": text}) + "\n")
    tmp.replace(out)
    print(f"{out}: {args.prompts} sentiment prompts (of {len(pool)} never-scored sentences) + "
          f"{len(documents) - args.prompts} Wikipedia articles")


if __name__ == "__main__":
    main()
