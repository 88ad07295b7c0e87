"""Structured pruning (slimkit-torch-pruning) on a real model: quality, size and CPU speed.

For each setting: prune a fresh copy of the model, measure held-out perplexity, run a short recovery
fine-tune (``slimkit.toolkit.training.finetune``) and measure again; then time every pruned model against
the unpruned fp32 model alternately in one process (``slimkit.evaluation.latency``, 1 thread).
Results go to ``benchmarks/structured_<model>.json`` (written after every setting) and a markdown
table to ``benchmarks/structured.md`` (the section for that model is replaced).

    OMP_NUM_THREADS=1 python benchmarks/structured.py --model smollm2-135m --steps 20
    OMP_NUM_THREADS=1 python benchmarks/structured.py --steps 10 --eval-tokens 2048 --tag recovery --accuracy \
        --recover-all --only "MLP 20% (activation)" "MLP 30% (activation)" "MLP 50% (activation)"

``--accuracy`` adds 2-shot sentiment accuracy (``slimkit.evaluation.tasks.sentiment_accuracy``) before and after
the fine-tune; ``--recover-all`` fine-tunes every selected setting for ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from slimkit.data import build_splits
from slimkit.evaluation import latency, perplexity
from slimkit.models import count_parameters, load_model
from slimkit.core.state import PipelineState
from slimkit.evaluation.tasks import sentiment_accuracy
from slimkit.toolkit.training import finetune
from slimkit_torch_pruning import StructuredPruner, StructuredPruningConfig

HERE = Path(__file__).resolve().parent

# name -> (pruner config, recovery fine-tune steps; None = the --steps value, 0 = none)
SETTINGS = {
    "smollm2-135m": {
        "MLP 30% (activation)": (dict(sparsity=0.3, importance="activation"), None),
        "MLP 30% (l2)": (dict(sparsity=0.3, importance="l2"), 0),
        "1 of 3 KV groups (activation)": (dict(sparsity=0.0, heads_sparsity=1 / 3, importance="activation"), 0),
        "MLP 30% + 1 of 3 KV groups (activation)": (dict(sparsity=0.3, heads_sparsity=1 / 3, importance="activation"), 0),
        "MLP 50% (activation)": (dict(sparsity=0.5, importance="activation"), None),
        "MLP 20% (activation)": (dict(sparsity=0.2, importance="activation"), 0),
        "MLP 20% (l2)": (dict(sparsity=0.2, importance="l2"), 0),
        "1 of 3 KV groups (l2)": (dict(sparsity=0.0, heads_sparsity=1 / 3, importance="l2"), 0),
        "MLP 30% (taylor)": (dict(sparsity=0.3, importance="taylor"), 0),
    },
    "gemma3-270m": {  # 4 query heads on 1 KV head: heads can only go within the group
        "MLP 30% (activation)": (dict(sparsity=0.3, importance="activation"), 0),
        "MLP 20% (activation)": (dict(sparsity=0.2, importance="activation"), 0),
        "MLP 50% (activation)": (dict(sparsity=0.5, importance="activation"), 0),
        "MLP 30% (l2)": (dict(sparsity=0.3, importance="l2"), 0),
        "1 of 4 query heads (activation)": (dict(sparsity=0.0, heads_sparsity=0.25, heads_structure="query_heads",
                                                 importance="activation"), 0),
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(SETTINGS))
    parser.add_argument("--steps", type=int, default=20, help="recovery fine-tune steps per setting (batch 4 x seq_len)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens from the end of the text")
    parser.add_argument("--only", nargs="*", help="run only these settings (names as in the table)")
    parser.add_argument("--skip", nargs="*", default=[], help="leave out these settings")
    parser.add_argument("--repeats", type=int, default=3, help="latency rounds (alternating)")
    parser.add_argument("--eval-batch", type=int, default=4, help="windows per perplexity forward (1 for big vocabularies)")
    parser.add_argument("--tag", default="", help="a separate results file and table section for this run")
    parser.add_argument("--accuracy", action="store_true", help="2-shot sentiment accuracy before and after fine-tune")
    parser.add_argument("--task-samples", type=int, default=200)
    parser.add_argument("--task-batch", type=int, default=8, help="prompts per forward (2 for Gemma's 262k vocabulary)")
    parser.add_argument("--recover-all", action="store_true", help="fine-tune every selected setting for --steps steps")
    args = parser.parse_args()
    torch.set_num_threads(1)

    loaded = load_model(args.model)
    base = loaded.model.requires_grad_(False)
    data = build_splits(loaded.tokenizer, seq_len=args.seq_len, train_tokens=max(32768, args.steps * 4 * args.seq_len),
                        calibration_samples=8, eval_tokens=args.eval_tokens)
    section = args.model + (f" ({args.tag})" if args.tag else "")
    out_json = HERE / f"structured_{args.model}{'_' + args.tag if args.tag else ''}.json"
    results = {"model": args.model, "section": section, "provenance": loaded.provenance, "steps": args.steps, "repeats": args.repeats, "seq_len": args.seq_len,
               "data": data.info, "threads": 1, "command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=HERE).stdout.strip(), "rows": {}}
    log(f"{args.model}: {count_parameters(base):,} parameters; eval {data.info['eval']}")
    t = time.perf_counter()
    results["rows"]["fp32 (unpruned)"] = {"parameters": count_parameters(base), "ppl": perplexity(base, data.eval, args.eval_batch)}
    log(f"baseline ppl {results['rows']['fp32 (unpruned)']['ppl']:.2f} ({time.perf_counter() - t:.0f} s)")

    def accuracy(model) -> float:
        t = time.perf_counter()
        value = sentiment_accuracy(model, loaded.tokenizer, samples=args.task_samples, batch_size=args.task_batch)
        log(f"sentiment accuracy {value:.3f} ({time.perf_counter() - t:.0f} s)")
        return value

    if args.accuracy:
        results["task"] = f"2-shot sentiment, {args.task_samples} balanced Rotten Tomatoes snippets (seed 0)"
        results["rows"]["fp32 (unpruned)"]["accuracy"] = accuracy(base)

    # one pruned model at a time (memory is shared): prune, time against fp32, perplexity, fine-tune, perplexity
    prompt = data.eval[:1, :128]
    for name, (kw, steps) in SETTINGS[args.model].items():
        if (args.only and name not in args.only) or name in args.skip:
            continue
        steps = args.steps if steps is None or args.recover_all else steps
        model = copy.deepcopy(base).requires_grad_(True)
        state = PipelineState(model, loaded.tokenizer, data, reference=base, seed=0)
        t = time.perf_counter()
        metrics = StructuredPruner(StructuredPruningConfig(**kw)).apply(state)
        row = {"config": kw, "parameters": metrics["parameters_after"], "prune_s": time.perf_counter() - t,
               "intermediate_size": metrics["intermediate_size"], "heads": metrics["num_attention_heads"],
               "kv_heads": metrics["num_key_value_heads"]}
        log(f"{name}: {row['parameters']:,} params ({row['prune_s']:.0f} s)")
        model.requires_grad_(False)
        timing = latency({"fp32": base, name: model}, prompt, threads=1, repeats=args.repeats, decode_tokens=16)
        row |= {"prefill_ms": timing[name]["prefill_ms"], "decode_tok_s": timing[name]["decode_tokens_per_s"],
                "fp32_prefill_ms": timing["fp32"]["prefill_ms"], "fp32_decode_tok_s": timing["fp32"]["decode_tokens_per_s"]}
        row["ppl_pruned"] = perplexity(model, data.eval, args.eval_batch)
        log(f"{name}: ppl {row['ppl_pruned']:.1f} before fine-tune; prefill x{row['prefill_ms'] / row['fp32_prefill_ms']:.2f}")
        if args.accuracy:
            row["accuracy_pruned"] = accuracy(model)
        if steps:
            if args.only and len(args.only) == 1:  # last use of the fp32 model: free its memory for the fine-tune
                state.reference = loaded.model = base = None
                gc.collect()
            model.requires_grad_(True)
            t = time.perf_counter()
            row["finetune"] = finetune(state, steps) | {"seconds": time.perf_counter() - t}
            row["ppl_finetuned"] = perplexity(model, data.eval, args.eval_batch)
            log(f"{name}: ppl {row['ppl_finetuned']:.2f} after {steps} steps ({row['finetune']['seconds']:.0f} s)")
            if args.accuracy:
                model.requires_grad_(False)
                row["accuracy_finetuned"] = accuracy(model)
        results["rows"][name] = row
        out_json.write_text(json.dumps(results, indent=1))
        write_markdown(results)
        del model, state
        gc.collect()
    write_markdown(results)
    log("done")


def write_markdown(results: dict) -> None:
    """Replace this model's section of benchmarks/structured.md with a table of ``results``."""
    rows, base = results["rows"], results["rows"]["fp32 (unpruned)"]
    ev = results["data"]["eval"]
    lines = [f"## {results['section']}", "",
             f"Command: `{results['command']}` (commit {results['commit']}). Model: {results['provenance']}. "
             f"Held-out perplexity on the last tokens {ev['tokens']} of the Wikipedia sample "
             f"({ev['windows']} windows of {results['seq_len']} tokens; never used for pruning or fine-tuning). "
             f"Recovery fine-tune (where the steps column says): AdamW steps (lr 5e-5) of batch 4 x {results['seq_len']} tokens "
             f"from the start of the text. Latency: `slimkit.evaluation.latency`, all models alternated in one process, "
             f"threads=1, prompt 128 tokens, 16 greedy decode tokens with KV cache, median of {results['repeats']} rounds; "
             f"each pruned model alternated with the unpruned fp32 model in its own call (ratios against that fp32 "
             f"timing) on a shared, heavily loaded 2-core machine, so ratios are noisy (about +-10%)."
             + (f" Accuracy: {results['task']} (slimkit.evaluation.tasks.sentiment_accuracy; chance 0.50, one binomial standard "
                "error about 3.5 points)." if "task" in results else ""), ""]
    acc = "task" in results
    if acc:
        lines += ["| setting | inter. | heads / kv | params (M) | params ratio | ppl pruned | ppl after fine-tune | "
                  "accuracy pruned | accuracy after fine-tune | fine-tune steps (s) | prefill ms (fp32 ms) | "
                  "prefill time ratio | decode tok/s (fp32) | decode speedup |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| setting | inter. | heads / kv | params (M) | params ratio | ppl pruned | ppl after fine-tune | "
                  "fine-tune steps | prefill time ratio | decode speedup |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        is_base = row is base
        if is_base:
            cells = [name, "", "", f"{row['parameters'] / 1e6:.1f}", "1.000", f"{row['ppl']:.2f}", "", "", "1.00", "1.00"]
        else:
            ft = row.get("finetune", {}).get("steps", 0)
            cells = [name, str(row["intermediate_size"]), f"{row['heads']} / {row['kv_heads']}",
                     f"{row['parameters'] / 1e6:.1f}", f"{row['parameters'] / base['parameters']:.3f}",
                     f"{row['ppl_pruned']:,.1f}", f"{row['ppl_finetuned']:.2f}" if ft else "not run", str(ft),
                     f"{row['prefill_ms'] / row['fp32_prefill_ms']:.2f}", f"{row['decode_tok_s'] / row['fp32_decode_tok_s']:.2f}"]
        if acc and is_base:
            cells = [name, "", "", f"{row['parameters'] / 1e6:.1f}", "1.000", f"{row['ppl']:.2f}", "",
                     f"{row['accuracy']:.3f}", "", "", "", "1.00", "", "1.00"]
        elif acc:
            ft = row.get("finetune", {})
            cells = [name, str(row["intermediate_size"]), f"{row['heads']} / {row['kv_heads']}",
                     f"{row['parameters'] / 1e6:.1f}", f"{row['parameters'] / base['parameters']:.3f}",
                     f"{row['ppl_pruned']:,.1f}", f"{row['ppl_finetuned']:.2f}" if ft else "not run",
                     f"{row['accuracy_pruned']:.3f}", f"{row['accuracy_finetuned']:.3f}" if "accuracy_finetuned" in row else "",
                     f"{ft['steps']} ({ft['seconds']:.0f})" if ft else "0",
                     f"{row['prefill_ms']:.0f} ({row['fp32_prefill_ms']:.0f})", f"{row['prefill_ms'] / row['fp32_prefill_ms']:.2f}",
                     f"{row['decode_tok_s']:.2f} ({row['fp32_decode_tok_s']:.2f})",
                     f"{row['decode_tok_s'] / row['fp32_decode_tok_s']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    section = "\n".join(lines) + "\n"
    md = HERE / "structured.md"
    text = md.read_text() if md.is_file() else (
        "# Structured pruning benchmark (slimkit-torch-pruning)\n\n"
        "Produced by `benchmarks/structured.py`; raw numbers in `benchmarks/structured_<model>.json`.\n\n")
    pattern = re.compile(rf"^## {re.escape(results['section'])}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text + section + "\n"
    md.write_text(text)


if __name__ == "__main__":
    main()
