"""Unstructured pruning on real models: magnitude vs Wanda vs Taylor at 30/50/70% (and 2:4), held-out
perplexity, few-shot sentiment accuracy, bytes on disk with sparse storage (fp32 and quanto int8), and
an iterative schedule with recovery vs one-shot.

    OMP_NUM_THREADS=1 python benchmarks/unstructured.py --part oneshot
    OMP_NUM_THREADS=1 python benchmarks/unstructured.py --part oneshot --criteria magnitude,wanda,taylor --accuracy
    OMP_NUM_THREADS=1 python benchmarks/unstructured.py --part oneshot --model gemma3-270m --eval-tokens 2048 \
        --eval-batch 1 --task-batch 2 --accuracy --no-2of4
    OMP_NUM_THREADS=1 python benchmarks/unstructured.py --part schedule
    python benchmarks/unstructured.py --report          # rewrites benchmarks/unstructured.md

Results accumulate in benchmarks/unstructured_results.json (one record per row, rerun-safe; with
--accuracy, rows that lack the sentiment accuracy are pruned again (deterministic) to add it).
In one-shot runs each criterion's scores are computed once from the dense model and reused for every
sparsity (what each fresh one-shot ``apply`` would compute anyway). Threads = 1. Perplexity: the pipeline's eval slice (the last --eval-tokens tokens of the Wikipedia
sample in 256-token windows), never used for calibration or recovery.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "unstructured_results.json"
REPORT = HERE / "unstructured.md"


def _load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": {}, "meta": {}}


def _save_row(key: str, row: dict, meta: dict) -> None:
    results = _load_results()
    results["rows"][key] = row
    if meta.get("model") == "smollm2-135m":  # "meta" describes the SmolLM2 rows (kept for older readers)
        results["meta"].update(meta)
    results.setdefault("models", {}).setdefault(meta["model"], {}).update(meta)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"[{key}] {json.dumps(row)}", flush=True)


def _bytes(tensors: dict, sparse: bool) -> int:
    from safetensors.torch import save_file

    from slimkit.toolkit.storage import save_tensors

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        if sparse:
            save_tensors(tensors, path)
        else:
            save_file(tensors, str(path))
        return path.stat().st_size


def _sizes(model: torch.nn.Module, int8: bool) -> dict:
    from slimkit.toolkit.storage import untied_state_dict

    out = {}
    sd = untied_state_dict(model)
    out["fp32_dense_bytes"], out["fp32_sparse_bytes"] = _bytes(sd, False), _bytes(sd, True)
    if int8:
        from optimum.quanto import freeze, qint8, quantize

        q = copy.deepcopy(model)
        quantize(q, weights=qint8, exclude=["lm_head"])
        freeze(q)
        sd = untied_state_dict(q)
        out["int8_dense_bytes"], out["int8_sparse_bytes"] = _bytes(sd, False), _bytes(sd, True)
        del q
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["oneshot", "schedule", "sensitivity"], default=None)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--sparsities", default="0.3,0.5,0.7")
    ap.add_argument("--criteria", default="magnitude,wanda")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--recovery-steps", type=int, default=8)
    ap.add_argument("--recovery-lr", type=float, default=1e-4)
    ap.add_argument("--accuracy", action="store_true", help="add 2-shot sentiment accuracy (200 samples) to each "
                    "one-shot row (re-pruning rows that lack it)")
    ap.add_argument("--task-samples", type=int, default=200)
    ap.add_argument("--task-batch", type=int, default=8, help="prompts per forward (2 for Gemma's 262k vocabulary)")
    ap.add_argument("--eval-batch", type=int, default=4, help="windows per perplexity forward")
    ap.add_argument("--no-2of4", action="store_true", help="skip the 2:4 rows")
    args = ap.parse_args()
    if args.report:
        write_report()
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from slimkit.data import build_splits
    from slimkit.evaluation import perplexity
    from slimkit.models import load_model
    from slimkit.core.state import PipelineState
    from slimkit_magnitude import MagnitudePruner
    from slimkit_taylor import TaylorPruner
    from slimkit_wanda import WandaPruner
    from slimkit.evaluation.tasks import sentiment_accuracy

    pruners = {"magnitude": MagnitudePruner, "wanda": WandaPruner, "taylor": TaylorPruner}
    loaded = load_model(args.model)
    data = build_splits(loaded.tokenizer, seq_len=256, train_tokens=32768, calibration_samples=16,
                        eval_tokens=args.eval_tokens)
    meta = {"model": loaded.name, "provenance": loaded.provenance, "threads": 1, "torch": torch.__version__,
            "eval": f"{data.info['eval']['tokens']} of {data.info['total_tokens']} tokens "
                    f"({data.eval.shape[0]} windows of 256)",
            "calibration": f"{data.info['calibration']['tokens']} (16 windows of 256)",
            "command": " ".join(["OMP_NUM_THREADS=1", "python"] + sys.argv), "machine": platform.machine(),
            "eval_windows": int(data.eval.shape[0])}
    if args.accuracy:
        meta["task"] = (f"2-shot sentiment, {args.task_samples} balanced Rotten Tomatoes snippets "
                        "(slimkit.evaluation.tasks.sentiment_accuracy, seed 0)")
    dense = loaded.model
    tag = args.model

    def ppl(model):
        return perplexity(model, data.eval, batch_size=args.eval_batch, desc="eval perplexity")

    def acc(model):
        start = time.time()
        value = sentiment_accuracy(model, loaded.tokenizer, samples=args.task_samples, batch_size=args.task_batch)
        print(f"  sentiment accuracy {value:.3f} ({time.time() - start:.0f} s)", flush=True)
        return value

    score_cache: dict = {}  # every criterion's scores stay in memory (~4 bytes per pruned weight each)
    score_seconds: dict = {}

    def cached(cls):
        """One-shot from the dense model: the scores are the same at every sparsity, so compute them once."""
        class Cached(cls):
            def scores(self, state, layers):
                if cls.name not in score_cache:
                    start = time.time()
                    score_cache[cls.name] = super().scores(state, layers)
                    score_seconds[cls.name] = round(time.time() - start, 1)
                return score_cache[cls.name]
        Cached.name = cls.name
        return Cached

    def state_for(model, splits=None):
        return PipelineState(model, loaded.tokenizer, splits or data, dense, work_dir=Path(tempfile.mkdtemp()))

    if args.part == "oneshot":
        key = f"{tag}/dense"
        old = _load_results()["rows"].get(key)
        if old is None:
            start = time.time()
            row = {"criterion": "dense", "sparsity_target": 0.0, "sparsity": 0.0, "perplexity": ppl(dense)}
            row.update(_sizes(dense, int8=True))
            row["seconds"] = round(time.time() - start, 1)
            if args.accuracy:
                row["sentiment_accuracy"] = acc(dense)
            _save_row(key, row, meta)
        elif args.accuracy and "sentiment_accuracy" not in old:
            _save_row(key, old | {"sentiment_accuracy": acc(dense)}, meta)
        plans = [(c, float(s), None) for s in args.sparsities.split(",") for c in args.criteria.split(",")]
        if not args.no_2of4:
            plans += [(c, 0.5, "2:4") for c in args.criteria.split(",")]
        for criterion, sparsity, pattern in plans:
            key = f"{tag}/{criterion}/{sparsity}" + (f"/{pattern}" if pattern else "")
            old = _load_results()["rows"].get(key)
            if old is not None and (not args.accuracy or pattern or "sentiment_accuracy" in old):
                continue
            model = copy.deepcopy(dense)
            cls = cached(pruners[criterion])
            start = time.time()
            metrics = cls(cls.Config(sparsity=sparsity, pattern=pattern)).apply(state_for(model))
            prune_s = time.time() - start
            if old is not None:  # an earlier row without accuracy: same deterministic pruning, add the accuracy
                if abs(metrics["sparsity"] - old["sparsity"]) > 1e-6:
                    raise RuntimeError(f"{key}: re-pruned sparsity {metrics['sparsity']} != recorded {old['sparsity']}")
                _save_row(key, old | {"sentiment_accuracy": acc(model), "accuracy_from_rerun": True}, meta)
                del model
                continue
            row = {"criterion": criterion, "scope": metrics["scope"], "pattern": pattern, "sparsity_target": sparsity,
                   "sparsity": metrics["sparsity"], "prune_seconds": round(prune_s, 1),
                   "score_seconds": score_seconds.get(criterion), "perplexity": ppl(model)}
            if args.accuracy and not pattern:
                row["sentiment_accuracy"] = acc(model)
            row.update(_sizes(model, int8=sparsity in (0.5, 0.7) and pattern is None))
            _save_row(key, row, meta)
            del model

    if args.part == "sensitivity":
        # per-block scan on the real model: magnitude scores, 1 calibration window of 256 tokens
        from slimkit.toolkit.modules import select_modules
        from slimkit.toolkit.pruning import sensitivity_scan

        layers = select_modules(dense, ["*"], ["lm_head"])
        out = HERE / "unstructured_sensitivity"
        start = time.time()
        table = sensitivity_scan(state_for(dense), layers, {n: m.weight.detach().abs() for n, m in layers.items()},
                                 [float(s) for s in args.sparsities.split(",")], windows=1, out_dir=out,
                                 label="magnitude")
        print(f"sensitivity scan: {time.time() - start:.0f} s, files {table['files']}")

    if args.part == "schedule":
        # recovery trains on 128-token windows (cheaper steps); validation (for the stop criterion) and
        # recovery never touch the eval slice
        from slimkit.toolkit.training import finetune

        splits128 = build_splits(loaded.tokenizer, seq_len=128, train_tokens=16384, calibration_samples=16,
                                 eval_tokens=128)
        calls = {"n": 0}

        def recover(state, steps):  # a fresh data order per call, so repeated calls see new batches
            calls["n"] += 1
            state.seed = 1000 + calls["n"]
            return finetune(state, steps, lr=args.recovery_lr, batch_size=2)

        total = args.steps * args.recovery_steps
        for criterion in args.criteria.split(","):
            cls = pruners[criterion]
            variants = {
                "oneshot+recovery": {"steps": 1, "recovery_steps": total},
                f"{args.steps}-step cubic+recovery": {"steps": args.steps, "ramp": "cubic",
                                                      "recovery_steps": args.recovery_steps},
            }
            for label, schedule in variants.items():
                key = f"{tag}/{criterion}/0.5/schedule/{label}"
                if key in _load_results()["rows"]:
                    continue
                calls["n"] = 0
                model = copy.deepcopy(dense)
                state = state_for(model, splits128)
                state.recover = recover
                start = time.time()
                metrics = cls(cls.Config(sparsity=0.5, schedule=schedule)).apply(state)
                row = {"criterion": criterion, "schedule": label, "sparsity_target": 0.5,
                       "sparsity": metrics["sparsity"], "recovery_steps_total": total,
                       "recovery_batch": "2 x 128 tokens", "recovery_lr": args.recovery_lr,
                       "seconds": round(time.time() - start, 1), "perplexity": ppl(model),
                       "steps": [{k: h.get(k) for k in ("step", "sparsity")} | {"last_loss": h.get("recovery", {}).get("last_loss")}
                                 for h in metrics["schedule"]["history"]]}
                _save_row(key, row, meta)
                del model


def _mb(n):
    return f"{n / 1e6:.1f}"


def write_report() -> None:
    results = _load_results()
    rows, meta = results["rows"], results["meta"]
    models = results.get("models", {})
    tags = list(dict.fromkeys(k.split("/")[0] for k in rows))
    lines = ["# Unstructured pruning: magnitude vs Wanda vs Taylor (" + ", ".join(tags) + ")", "",
             f"Threads: 1. torch {meta.get('torch')}. 2-core x86_64 CPU shared with other jobs.",
             "Perplexity on each model's eval slice of the Wikipedia sample (the pipeline's eval split: the tail "
             "of the stream, never used for calibration or recovery); the slice per model is given below.",
             "Calibration (Wanda activation norms, Taylor gradients): the first 16 windows of 256 tokens (head of "
             "the stream).",
             "Sentiment: 2-shot accuracy on 200 balanced Rotten Tomatoes snippets (`slimkit.evaluation.tasks.sentiment_accuracy`, "
             "seed 0; chance = 0.50, about +-3.5 points is one binomial standard error).",
             "Commands: `OMP_NUM_THREADS=1 python benchmarks/unstructured.py --part oneshot` (first rows); "
             "`OMP_NUM_THREADS=1 python benchmarks/unstructured.py --part oneshot --criteria magnitude,wanda,taylor "
             "--accuracy` (accuracy column, Taylor rows); the per-model command is below; "
             "`OMP_NUM_THREADS=1 python benchmarks/unstructured.py --part schedule --criteria magnitude --steps 4 "
             "--recovery-steps 6`; `OMP_NUM_THREADS=1 python benchmarks/unstructured.py --part sensitivity "
             "--sparsities 0.5,0.7,0.9`; then `python benchmarks/unstructured.py --report` (writes this file).",
             "Magnitude compares weights per layer (scope=layer); Wanda (|W|·‖X_j‖₂) and Taylor (Σ over windows "
             "of (W·∂L/∂W)², next-token loss, one window per backward) per output row (scope=row); `lm_head` (tied "
             "to the embedding) is excluded, so 'sparsity' is over the decoder Linear layers. One-shot rows reuse "
             "each criterion's scores (computed once from the dense model) across sparsities. Rows marked * had "
             "their accuracy added by a later deterministic re-prune (same sparsity checked; perplexity and bytes "
             "from the first run).",
             "Bytes: the whole state dict (tied embedding once) written with `safetensors.save_file` (dense) vs "
             "`slimkit.toolkit.storage.save_tensors` (bitmask + nonzero values for tensors where that is smaller); int8 = "
             "optimum-quanto qint8 weights, lm_head/embedding kept fp32."]
    dense_ppl = {k.split("/")[0]: r["perplexity"] for k, r in rows.items() if r["criterion"] == "dense"}
    for tag in tags:
        m = models.get(tag) or (meta if meta.get("model") == tag else {})
        lines += ["", f"## {tag}", "", f"Model: {m.get('provenance')}. Eval slice: tokens {m.get('eval')}. "
                  f"Last command: `{m.get('command')}`.", "",
                  "| criterion | pattern | target | actual sparsity | perplexity | × dense | sentiment acc | fp32 dense MB | "
                  "fp32 sparse MB | int8 dense MB | int8 sparse MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        order = {"dense": 0, "magnitude": 1, "wanda": 2, "taylor": 3}
        keys = sorted((k for k, r in rows.items() if k.split("/")[0] == tag and "schedule" not in r),
                      key=lambda k: (bool(rows[k].get("pattern")), rows[k]["sparsity_target"], order.get(rows[k]["criterion"], 9)))
        for key in keys:
            r, base = rows[key], dense_ppl.get(tag)
            accuracy = f"{r['sentiment_accuracy']:.3f}" + ("*" if r.get("accuracy_from_rerun") else "") \
                if "sentiment_accuracy" in r else "-"
            lines.append(f"| {r['criterion']} | {r.get('pattern') or '-'} | {r['sparsity_target']:.2f} | "
                         f"{r['sparsity']:.4f} | {r['perplexity']:,.2f} | {r['perplexity'] / base:,.2f} | {accuracy} | "
                         f"{_mb(r['fp32_dense_bytes'])} | {_mb(r['fp32_sparse_bytes'])} | "
                         f"{_mb(r['int8_dense_bytes']) if 'int8_dense_bytes' in r else '-'} | "
                         f"{_mb(r['int8_sparse_bytes']) if 'int8_sparse_bytes' in r else '-'} |")
    sched = {k: r for k, r in rows.items() if "schedule" in r}
    if sched:
        lines += ["", "## Iterative schedule with recovery vs one-shot, 50% (smollm2-135m)", "",
                  "| model/criterion | schedule | recovery steps (total) | actual sparsity | perplexity | × dense | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for key, r in rows.items():
            if "schedule" in r or r["criterion"] == "dense" or r["sparsity_target"] != 0.5 or r.get("pattern"):
                continue
            if any(s["criterion"] == r["criterion"] and k.split("/")[0] == key.split("/")[0] for k, s in sched.items()):
                base = dense_ppl[key.split("/")[0]]
                lines.append(f"| {key.split('/')[0]}/{r['criterion']} | one-shot, no recovery | 0 | {r['sparsity']:.4f} | "
                             f"{r['perplexity']:.2f} | {r['perplexity'] / base:.2f} | - |")
        for key, r in sched.items():
            base = dense_ppl[key.split("/")[0]]
            lines.append(f"| {key.split('/')[0]}/{r['criterion']} | {r['schedule']} | {r['recovery_steps_total']} | "
                         f"{r['sparsity']:.4f} | {r['perplexity']:.2f} | {r['perplexity'] / base:.2f} | {r['seconds']} |")
        any_r = next(iter(sched.values()))
        lines += ["", f"Recovery: `slimkit.toolkit.training.finetune` (next-token loss, AdamW lr {any_r['recovery_lr']}, "
                  f"batch {any_r['recovery_batch']}, zeros kept by masking) on training windows from the head of "
                  "the stream; each recovery call gets a fresh data order."]
    REPORT.write_text("\n".join(lines) + "\n" + _notes())
    print(REPORT.read_text())


def _notes() -> str:
    notes = HERE / "unstructured_notes.md"
    return "\n" + notes.read_text() if notes.is_file() else ""


if __name__ == "__main__":
    main()
