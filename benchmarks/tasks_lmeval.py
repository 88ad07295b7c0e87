"""Task scores through lm-evaluation-harness beside slimkit's built-in sentiment scorer, on SmolLM2-135M:
fp32 and the reloaded ``int8`` artifact, the same 200 balanced Rotten Tomatoes sentences (2-shot), plus the
``cloze`` task (last-word prediction on the default evaluation slice of the Wikipedia sample).

The built-in scorer (``slimkit.evaluation.tasks.sentiment_accuracy``) compares the first token of
" negative"/" positive"; lm-eval's multiple-choice ``acc`` compares the summed log-likelihood of each whole
label. SmolLM2's tokenizer makes both labels one token, so the two must agree example by example.

    OMP_NUM_THREADS=1 python benchmarks/tasks_lmeval.py --out benchmarks/tasks_lmeval.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from slimkit.core.registry import default_registry
from slimkit.core.state import PipelineState
from slimkit.data import build_splits
from slimkit.evaluation.tasks import TaskSet, sentiment_accuracy
from slimkit.models import load_model
from slimkit.pipeline.runner import load, save_artifact, stage_record


def int8_artifact(loaded, data, folder: Path) -> torch.nn.Module:
    """The default ``int8`` quantizer applied to a copy of the model, saved as an artifact and reloaded."""
    from slimkit.core.plugin import Kind

    registry = default_registry()
    cls = registry.get(Kind.QUANTIZER, "int8")
    stage = cls(cls.Config())
    state = PipelineState(copy.deepcopy(loaded.model), loaded.tokenizer, data, loaded.model)
    stage.apply(state)
    record = stage_record(registry.info(Kind.QUANTIZER, "int8"), stage)
    save_artifact(state, folder, True, [record], {"name": loaded.name})
    return load(folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/tasks_lmeval.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "threads": args.threads,
              "load_average_start": os.getloadavg(), "python": platform.python_version(), "torch": torch.__version__}
    import lm_eval

    result["lm_eval"] = lm_eval.__version__ if hasattr(lm_eval, "__version__") else "0.4.x"
    loaded = load_model("smollm2-135m")
    tok = loaded.tokenizer
    result["label_tokens"] = {w: tok(w, add_special_tokens=False)["input_ids"] for w in (" negative", " positive")}
    data = build_splits(tok)  # the default data config: the same eval slice every run reports
    tasks = TaskSet(["sentiment"])
    cloze = TaskSet(["cloze"])
    cloze.bind(data, tok)  # passages from the evaluation token range only
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-") as tmp:
        start = time.perf_counter()
        models = {"fp32": loaded.model.eval(), "int8": int8_artifact(loaded, data, Path(tmp) / "model")}
        result["int8_build_seconds"] = round(time.perf_counter() - start, 1)
        for name, model in models.items():
            row = {}
            start = time.perf_counter()
            row["builtin_sentiment_accuracy"] = sentiment_accuracy(model, tok, samples=args.samples)
            row["builtin_seconds"] = round(time.perf_counter() - start, 1)
            start = time.perf_counter()
            sentiment = tasks.evaluate(model, tok, limit=args.samples)["sentiment"]
            row["lm_eval_sentiment"] = sentiment
            row["lm_eval_sentiment_samples"] = tasks.infos["sentiment"].samples
            row["lm_eval_seconds"] = round(time.perf_counter() - start, 1)
            row["lm_eval_cloze"] = cloze.evaluate(model, tok, limit=None)["cloze"]
            row["lm_eval_cloze_samples"] = cloze.infos["cloze"].samples
            result[name] = row
            print(name, json.dumps(row), flush=True)
    result["agree"] = {name: result[name]["builtin_sentiment_accuracy"] == result[name]["lm_eval_sentiment"]["acc"]
                       for name in models}
    result["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
