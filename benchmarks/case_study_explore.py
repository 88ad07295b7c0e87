"""Case study, quality exploration: structured prune (torch_pruning) -> kd recovery -> int8 on one model.

For each setting the original model is copied, pruned with the ``torch_pruning`` stage, distilled
from the original with the ``kd`` plugin's loss (its ``_loss_fn``: T^2*KL + CE [+ hidden MSE]) in a
plain AdamW loop that evaluates held-out perplexity at the steps in ``--eval-at`` (and times every
step), then scored for 2-shot sentiment accuracy (``slimkit.evaluation.tasks.sentiment_accuracy``) as fp32 and
after the ``int8`` quantizer. One process, one model at a time, threads pinned.

    OMP_NUM_THREADS=1 python benchmarks/case_study_explore.py --settings mlp0.3,mlp0.4 --steps 60 \
        --eval-at 0,20,40,60 --out benchmarks/case_study_explore.json

A setting is ``mlp<fraction>`` optionally followed by ``+kv<fraction>`` (KV groups removed).
Perplexity: the last ``--eval-tokens`` tokens of the Wikipedia sample in 256-token windows (never
trained on; training windows come from the head of the text).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import torch

from slimkit.data import build_splits
from slimkit.evaluation import perplexity
from slimkit.models import count_parameters, load_model
from slimkit.core.state import PipelineState
from slimkit.evaluation.tasks import sentiment_accuracy


def parse_setting(text: str) -> tuple[float, float]:
    mlp, kv = 0.0, 0.0
    for part in text.split("+"):
        if part.startswith("mlp"):
            mlp = float(part[3:])
        elif part.startswith("kv"):
            kv = float(part[2:])
        else:
            raise SystemExit(f"bad setting {text!r}: expected mlp<f>[+kv<f>]")
    return mlp, kv


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--settings", default="mlp0.3")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-at", default="0,20,40")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--hidden-weight", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-tokens", type=int, default=262144)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--sentiment", type=int, default=200, help="samples (0: skip)")
    ap.add_argument("--sentiment-at-0", action="store_true", help="also score sentiment right after pruning")
    ap.add_argument("--int8", action="store_true", help="also score the student after quantizer=int8")
    ap.add_argument("--baseline", action="store_true", help="score the unpruned original (fp32 and int8) first")
    ap.add_argument("--ppl-only", action="store_true", help="skip sentiment and int8 (cross-checks)")
    ap.add_argument("--out", default="benchmarks/case_study_explore.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from slimkit_kd import KDConfig, KDDistiller
    from slimkit_torch_pruning import StructuredPruner, StructuredPruningConfig

    loaded = load_model(args.model)
    tok = loaded.tokenizer
    data = build_splits(tok, seq_len=args.seq_len, train_tokens=args.train_tokens,
                        calibration_samples=args.calibration, eval_tokens=args.eval_tokens)
    eval_windows = build_splits(tok, seq_len=256, train_tokens=args.train_tokens, calibration_samples=1,
                                eval_tokens=args.eval_tokens)
    held_out = eval_windows.eval
    original = loaded.model.eval().requires_grad_(False)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"rows": []}
    results.update(model=loaded.provenance, eval_slice=eval_windows.info["eval"], threads=args.threads)
    eval_at = sorted({int(s) for s in args.eval_at.split(",")} | {args.steps})
    sentiment = 0 if args.ppl_only else args.sentiment

    def save() -> None:
        out.write_text(json.dumps(results, indent=1))

    def int8(model):
        from slimkit_int8 import Int8Config, Int8Quantizer

        state = PipelineState(copy.deepcopy(model), tok, data, original, work_dir=Path("/tmp"))
        Int8Quantizer(Int8Config()).apply(state)
        return state.model

    def add_scores(row: dict, scored: torch.nn.Module) -> None:
        """Sentiment of ``scored``, and perplexity + sentiment after int8 (as the flags ask)."""
        if sentiment:
            row["sentiment"] = sentiment_accuracy(scored, tok, samples=sentiment)
        if args.int8 and not args.ppl_only:
            q = int8(scored)
            row["ppl_int8"] = perplexity(q, held_out, 4)
            if sentiment:
                row["sentiment_int8"] = sentiment_accuracy(q, tok, samples=sentiment)

    if args.baseline:
        row = {"setting": "fp32 original", "params": count_parameters(original), "load": load_avg(),
               "ppl": perplexity(original, held_out, 4)}
        add_scores(row, original)
        print(json.dumps(row), flush=True)
        results["rows"].append(row)
        save()

    for setting in args.settings.split(","):
        mlp, kv = parse_setting(setting)
        model = copy.deepcopy(original)
        state = PipelineState(model, tok, data, original, work_dir=Path("/tmp"), seed=0)
        t0 = time.time()
        if mlp or kv:
            prune = StructuredPruner(StructuredPruningConfig(sparsity=mlp, heads_sparsity=kv, importance="activation"))
            prune.apply(state)
            state.applied.append("pruner")
        model = state.model
        row = {"setting": setting, "params": count_parameters(model), "prune_s": round(time.time() - t0, 1),
               "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len, "lr": args.lr,
               "alpha": args.alpha, "temperature": args.temperature, "hidden_weight": args.hidden_weight,
               "threads": args.threads, "load_start": load_avg(), "curve": []}
        kd = KDDistiller(KDConfig(alpha=args.alpha, temperature=args.temperature, hidden_weight=args.hidden_weight,
                                  lr=args.lr, batch_size=args.batch))
        layer_map = kd._layer_map(model, original, None, model.config.num_hidden_layers) if args.hidden_weight else None
        loss_fn = kd._loss_fn(original, layer_map)
        model.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.lr)
        gen = torch.Generator().manual_seed(0)
        step_times: list[float] = []
        for step in range(args.steps + 1):
            if step in eval_at:
                model.eval()
                p = perplexity(model, held_out, 4)
                row["curve"].append({"step": step, "ppl": p, "train_s": round(sum(step_times), 1)})
                if step == 0 and args.sentiment_at_0 and sentiment and args.steps:
                    row["sentiment_step0"] = sentiment_accuracy(model, tok, samples=sentiment)
                    print(setting, "sentiment after pruning", row["sentiment_step0"], flush=True)
                print(setting, "step", step, "ppl", round(p, 2), "load", load_avg(), flush=True)
                save()
                model.train()
            if step == args.steps:
                break
            idx = torch.randint(0, data.train.shape[0], (args.batch,), generator=gen)
            for g in opt.param_groups:
                g["lr"] = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup else args.lr
            t = time.time()
            loss, parts = loss_fn(model, data.train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step_times.append(time.time() - t)
            if step % 5 == 0:
                print(f"  step {step} loss {loss.item():.3f} {parts} {step_times[-1]:.1f}s", flush=True)
        del opt
        model.requires_grad_(False).eval()
        row.update(ppl=row["curve"][-1]["ppl"], kd_s=round(sum(step_times), 1),
                   s_per_step=round(sum(step_times) / max(1, len(step_times)), 2),
                   s_per_step_median=round(sorted(step_times)[len(step_times) // 2], 2) if step_times else None,
                   load_end=load_avg())
        add_scores(row, model)
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
        results["rows"].append(row)
        save()
        del model, state


if __name__ == "__main__":
    main()
