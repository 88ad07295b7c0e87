"""What makes the ``int8`` artifact's sentiment margins depend on the batch a prompt is scored in
(``tasks_lmeval_int8_diff.json``: up to 0.43 nats between batches of 8 and one prompt at a time)?

For the same 200 prompts, the label margin (log p(" positive") − log p(" negative") at the last prompt token) of
the fp32 model and of the int8 artifact, each scored (a) one prompt at a time, (b) in right-padded batches of 8
(the old built-in scorer), (c) in batches of 8 copies of the *same* prompt (more GEMM rows, no padding).
(c) vs (a) isolates the kernels' row count; (b) vs (a) adds padding and the attention mask. fp32 shows how large
the float-level differences between these calls are; int8 shows what per-token int8 rounding makes of them.

    OMP_NUM_THREADS=1 python benchmarks/tasks_int8_batch_cause.py --out benchmarks/tasks_int8_batch_cause.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from slimkit.data import build_splits
from slimkit.evaluation.tasks import _prompt, sentiment_examples
from slimkit.models import load_model

sys.path.insert(0, str(Path(__file__).parent))
from tasks_lmeval import int8_artifact  # noqa: E402
from tasks_lmeval_int8_diff import margins  # noqa: E402


def repeated_margins(model, tok, prompts: list[str], copies: int) -> list[float]:
    """Each prompt scored in a batch of ``copies`` identical rows (no padding); the first row's margin."""
    return [margins(model, tok, [p] * copies, copies)[0] for p in prompts]


def summary(single: list[float], other: list[float], labels: list[int]) -> dict:
    diffs = [abs(a - b) for a, b in zip(single, other)]
    return {"max_abs_margin_difference": max(diffs), "mean_abs_margin_difference": sum(diffs) / len(diffs),
            "identical_margins": sum(d == 0.0 for d in diffs),
            "decisions_that_differ": sum((a > 0) != (b > 0) for a, b in zip(single, other)),
            "accuracy": sum(int((m > 0) == bool(y)) for m, y in zip(other, labels)) / len(labels)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if Path(args.out).exists():
        raise SystemExit(f"{args.out} exists; results files are never overwritten")
    torch.set_num_threads(1)
    result = {"command": " ".join(["python", *sys.argv]), "threads": 1, "load_average_start": os.getloadavg()}
    loaded = load_model("smollm2-135m")
    tok = loaded.tokenizer
    data = build_splits(tok)
    demos, examples = sentiment_examples(args.samples)
    prompts = [_prompt(demos, s) for s, _ in examples]
    labels = [y for _, y in examples]
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-") as tmp:
        models = {"fp32": loaded.model.eval(), "int8": int8_artifact(loaded, data, Path(tmp) / "model")}
        for name, model in models.items():
            single = margins(model, tok, prompts, 1)
            result[name] = {"single_prompt_accuracy": summary(single, single, labels)["accuracy"],
                            "padded_batch8_vs_single": summary(single, margins(model, tok, prompts, 8), labels),
                            "same_prompt_x8_vs_single": summary(single, repeated_margins(model, tok, prompts, 8), labels)}
    result["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
