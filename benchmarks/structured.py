"""Structured pruning (slimkit-torch-pruning) on a real model: quality, size and CPU speed.

For each setting: prune a fresh copy of the model, measure held-out perplexity, run a short recovery
fine-tune (``slimkit.training.finetune``) and measure again; then time every pruned model against
the unpruned fp32 model alternately in one process (``slimkit.evaluate.latency``, 1 thread).
Results go to ``benchmarks/structured_<model>.json`` (written after every setting) and a markdown
table to ``benchmarks/structured.md`` (the section for that model is replaced).

    OMP_NUM_THREADS=1 python benchmarks/structured.py --model smollm2-135m --steps 20
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from slimkit.data import build_splits
from slimkit.evaluate import latency, perplexity
from slimkit.models import count_parameters, load_model
from slimkit.state import PipelineState
from slimkit.training import finetune
from slimkit_torch_pruning import StructuredPruner, StructuredPruningConfig

HERE = Path(__file__).resolve().parent

SETTINGS = {
    "smollm2-135m": {
        "MLP 20%": dict(sparsity=0.2),
        "MLP 30%": dict(sparsity=0.3),
        "MLP 50%": dict(sparsity=0.5),
        "1 of 3 KV groups": dict(sparsity=0.0, heads_sparsity=1 / 3),
        "MLP 30% + 1 of 3 KV groups": dict(sparsity=0.3, heads_sparsity=1 / 3),
        "MLP 30% (taylor)": dict(sparsity=0.3, importance="taylor"),
        "MLP 30% (activation)": dict(sparsity=0.3, importance="activation"),
        "MLP 50% (activation)": dict(sparsity=0.5, importance="activation"),
        "MLP 30% + 1 of 3 KV groups (activation)": dict(sparsity=0.3, heads_sparsity=1 / 3, importance="activation"),
    },
    "gemma3-270m": {  # 4 query heads on 1 KV head: heads can only go within the group
        "MLP 30%": dict(sparsity=0.3),
        "MLP 50%": dict(sparsity=0.5),
        "1 of 4 query heads": dict(sparsity=0.0, heads_sparsity=0.25, heads_structure="query_heads"),
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
    parser.add_argument("--tag", default="", help="a separate results file and table section for this run")
    args = parser.parse_args()
    torch.set_num_threads(1)

    loaded = load_model(args.model)
    base = loaded.model.requires_grad_(False)
    data = build_splits(loaded.tokenizer, seq_len=args.seq_len, train_tokens=max(32768, args.steps * 4 * args.seq_len),
                        calibration_samples=8, eval_tokens=args.eval_tokens)
    section = args.model + (f" ({args.tag})" if args.tag else "")
    out_json = HERE / f"structured_{args.model}{'_' + args.tag if args.tag else ''}.json"
    results = {"model": args.model, "section": section, "provenance": loaded.provenance, "steps": args.steps, "seq_len": args.seq_len,
               "data": data.info, "threads": 1, "command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=HERE).stdout.strip(), "rows": {}}
    log(f"{args.model}: {count_parameters(base):,} parameters; eval {data.info['eval']}")
    t = time.perf_counter()
    results["rows"]["fp32 (unpruned)"] = {"parameters": count_parameters(base), "ppl": perplexity(base, data.eval)}
    log(f"baseline ppl {results['rows']['fp32 (unpruned)']['ppl']:.2f} ({time.perf_counter() - t:.0f} s)")

    # prune every setting first: the timing needs only the shapes, so it runs before the (slow) fine-tunes
    models, states = {"fp32 (unpruned)": base}, {}
    for name, kw in SETTINGS[args.model].items():
        if (args.only and name not in args.only) or name in args.skip:
            continue
        model = copy.deepcopy(base).requires_grad_(True)
        state = PipelineState(model, loaded.tokenizer, data, reference=base, seed=0)
        t = time.perf_counter()
        metrics = StructuredPruner(StructuredPruningConfig(**kw)).apply(state)
        results["rows"][name] = {"config": kw, "parameters": metrics["parameters_after"], "prune_s": time.perf_counter() - t,
                                 "intermediate_size": metrics["intermediate_size"], "heads": metrics["num_attention_heads"],
                                 "kv_heads": metrics["num_key_value_heads"]}
        models[name], states[name] = model, state
        log(f"{name}: {metrics['parameters_after']:,} params ({results['rows'][name]['prune_s']:.0f} s)")

    prompt = data.eval[:1, :128]
    log(f"latency: {len(models)} models alternated, {args.repeats} rounds, 1 thread")
    timing = latency(models, prompt, threads=1, repeats=args.repeats, decode_tokens=32)
    for name, row in results["rows"].items():
        row["prefill_ms"], row["decode_tok_s"] = timing[name]["prefill_ms"], timing[name]["decode_tokens_per_s"]
    out_json.write_text(json.dumps(results, indent=1))
    write_markdown(results)

    for name, state in states.items():
        row = results["rows"][name]
        row["ppl_pruned"] = perplexity(state.model, data.eval)
        log(f"{name}: ppl {row['ppl_pruned']:.1f} before fine-tune")
        t = time.perf_counter()
        ft = finetune(state, args.steps)
        row["finetune"] = ft | {"seconds": time.perf_counter() - t}
        row["ppl_finetuned"] = perplexity(state.model, data.eval)
        log(f"{name}: ppl {row['ppl_finetuned']:.2f} after {args.steps} steps ({row['finetune']['seconds']:.0f} s)")
        out_json.write_text(json.dumps(results, indent=1))
        write_markdown(results)
        states[name] = None
        models.pop(name)
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
             f"Recovery fine-tune: {results['steps']} AdamW steps (lr 5e-5) of batch 4 x {results['seq_len']} tokens "
             f"from the start of the text. Latency: `slimkit.evaluate.latency`, all models alternated in one process, "
             f"threads=1, prompt 128 tokens, 32 greedy decode tokens with KV cache, median; ratios against the "
             f"unpruned fp32 model on a shared, loaded 2-core machine (timed on the pruned models before fine-tuning; fine-tuning does not change shapes).", "",
             "| setting | inter. | heads / kv | params (M) | params ratio | ppl pruned | ppl after fine-tune | "
             "prefill ms (ratio) | decode tok/s (speedup) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        is_base = row is base
        pre = row.get("prefill_ms", math.nan)
        dec = row.get("decode_tok_s", math.nan)
        lines.append("| " + " | ".join([
            name,
            "" if is_base else str(row["intermediate_size"]),
            "" if is_base else f"{row['heads']} / {row['kv_heads']}",
            f"{row['parameters'] / 1e6:.1f}",
            f"{row['parameters'] / base['parameters']:.3f}",
            f"{base['ppl']:.2f}" if is_base else (f"{row['ppl_pruned']:.1f}" if "ppl_pruned" in row else "pending"),
            "" if is_base else (f"{row['ppl_finetuned']:.2f}" if "ppl_finetuned" in row else "pending"),
            f"{pre:.0f} ({pre / base.get('prefill_ms', math.nan):.2f})",
            f"{dec:.1f} ({dec / base.get('decode_tok_s', math.nan):.2f})",
        ]) + " |")
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
