"""Speed vs quality of the int8 backend (slimkit-int8) against fp32 on a real model, 1 thread.

Arms: fp32; int8 per-token without smoothing; int8 per-token with SmoothQuant (alpha); the same with
the N worst Linear layers kept float; int8 per-tensor (fbgemm everywhere) with and without smoothing.
Quality: held-out perplexity on the last ``--eval-windows`` x ``--seq-len`` tokens of the Wikipedia
sample (calibration uses the first windows of the train slice, disjoint), and few-shot sentiment
accuracy (``slimkit.evaluation.tasks``). Size: the artifact's safetensors files. Speed: prefill of a
``--prompt``-token prompt (ms) and greedy decode with the KV cache (tokens/s), timed alternately
in one process (``slimkit.evaluation.latency``), medians, threads=1.

    OMP_NUM_THREADS=1 python benchmarks/speed.py --model smollm2-135m --out benchmarks/speed_smollm2.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from slimkit.data import build_splits
from slimkit.evaluation import latency, perplexity
from slimkit.models import load_model
from slimkit.core.state import PipelineState
from slimkit_int8 import Int8Config, Int8Quantizer


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors") / 1e6


def render(paths: list[str]) -> str:
    """A markdown table per results JSON (``--render a.json b.json``)."""
    out = []
    for path in paths:
        d = json.loads(Path(path).read_text())
        ev = d["eval_slice"]
        out.append(f"### {d['model']} ({path})\n\n{d['provenance']}; torch {d['torch']}, threads={d['threads']}; "
                   f"perplexity on eval tokens {ev['tokens']} of the Wikipedia sample ({ev['windows']} windows of "
                   f"{d['seq_len']}); calibration tokens {d['calibration_slice']['tokens']}; prefill = {d['prompt_tokens']}-token "
                   f"prompt; decode = {d['decode_tokens']} greedy tokens with KV cache; medians of {d['repeats']} "
                   f"alternating rounds; sentiment = {d['sentiment_samples']} balanced few-shot examples (slimkit.evaluation.tasks)"
                   + (f"; 1-minute load average {d['load_average']['start'][0]:.1f} at start, {d['load_average']['end'][0]:.1f} at end"
                      if "load_average" in d else "") + ".\n")
        out.append("| arm | config | ppl | ppl ×fp32 | sentiment acc | artifact MB | prefill ms | prefill speedup | decode tok/s | decode speedup |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for arm, r in d["arms"].items():
            acc = f"{r['sentiment_accuracy']:.3f}" if "sentiment_accuracy" in r else "—"
            cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items()) or "—"
            out.append(f"| {arm} | {cfg} | {r['perplexity']:.2f} | {r['ppl_ratio']:.3f} | {acc} | {r['artifact_mb']:.0f} | "
                       f"{r['prefill_ms']:.0f} | {r['prefill_speedup']:.2f} | {r['decode_tokens_per_s']:.1f} | {r['decode_speedup']:.2f} |")
        kept = {a: r["kept_float"] for a, r in d["arms"].items() if "kept_float" in r}
        for a, k in kept.items():
            out.append(f"\n{a} kept float (relative int8 output error on calibration): " +
                       ", ".join(f"`{n}` {e}" for n, e in k.items()))
        out.append("")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        print(render(sys.argv[2:]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--calibration", type=int, default=16)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--keep-float", type=int, default=4)
    p.add_argument("--arms", default="fp32,int8_raw,int8_smooth,int8_smooth_keep,tensor_smooth",
                   help="also: tensor_raw (per-tensor, unsmoothed: like torch quantize_dynamic)")
    p.add_argument("--sentiment", type=int, default=200, help="sentiment examples (0: skip)")
    p.add_argument("--sentiment-arms", default="fp32,int8_smooth", help="arms scored on sentiment ('all': every arm)")
    p.add_argument("--batch-size", type=int, default=4, help="perplexity batch (1 for Gemma's 262k vocabulary)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads for every measurement")
    p.add_argument("--out", default="benchmarks/speed_results.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    loaded = load_model(args.model)
    tok = loaded.tokenizer
    data = build_splits(tok, seq_len=args.seq_len, train_tokens=args.calibration * args.seq_len,
                        calibration_samples=args.calibration, eval_tokens=args.eval_windows * args.seq_len)
    arms_cfg = {
        "int8_raw": dict(smooth=False),
        "int8_smooth": dict(smooth=True, alpha=args.alpha),
        "int8_smooth_keep": dict(smooth=True, alpha=args.alpha, keep_float=args.keep_float),
        # the backend before GEMM fusion and the int8 embedding table (its first benchmarked form)
        "int8_smooth_unfused": dict(smooth=True, alpha=args.alpha, fuse=False, embedding="float"),
        "tensor_raw": dict(smooth=False, activations="int8-tensor"),
        "tensor_smooth": dict(smooth=True, alpha=args.alpha, activations="int8-tensor"),
    }
    wanted = args.arms.split(",")
    models, rows = {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="speed-"))
    for arm in wanted:
        t0 = time.perf_counter()
        if arm == "fp32":
            model = loaded.model
            model.save_pretrained(tmp / arm, safe_serialization=True)
            extra = {}
        else:
            model = copy.deepcopy(loaded.model)
            state = PipelineState(model, tok, data, loaded.model, work_dir=tmp)
            stage = Int8Quantizer(Int8Config(**arms_cfg[arm]))
            extra = stage.apply(state)
            (tmp / arm).mkdir()
            stage.save(state.model, tmp / arm)
            model = state.model
        quant_s = time.perf_counter() - t0
        models[arm] = model
        row = {"config": arms_cfg.get(arm, {}), "quantize_s": round(quant_s, 1), "artifact_mb": round(folder_mb(tmp / arm), 1),
               "perplexity": perplexity(model, data.eval, batch_size=args.batch_size, desc=arm)}
        if args.sentiment and (args.sentiment_arms == "all" or arm in args.sentiment_arms.split(",")):
            from slimkit.evaluation.tasks import sentiment_accuracy

            row["sentiment_accuracy"] = sentiment_accuracy(model, tok, samples=args.sentiment, desc=arm)
        if "kept_float" in extra:
            row["kept_float"] = extra["kept_float"]
        if "smoothing" in extra:
            row["smoothing"] = extra["smoothing"]
        rows[arm] = row
        print(arm, {k: v for k, v in row.items() if k not in ("kept_float", "smoothing")}, flush=True)
    prompt = data.eval[:1, : args.prompt]
    timing = latency(models, prompt, threads=args.threads, repeats=args.repeats, decode_tokens=args.decode_tokens)
    base = timing["fp32"]
    for arm in wanted:
        t = timing[arm]
        rows[arm].update(prefill_ms=t["prefill_ms"], decode_tokens_per_s=t["decode_tokens_per_s"],
                         prefill_speedup=base["prefill_ms"] / t["prefill_ms"],
                         decode_speedup=t["decode_tokens_per_s"] / base["decode_tokens_per_s"],
                         ppl_ratio=rows[arm]["perplexity"] / rows["fp32"]["perplexity"])
        print(arm, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[arm].items()
                    if k not in ("kept_float", "smoothing", "config")}, flush=True)
    out = {"model": args.model, "provenance": loaded.provenance, "threads": args.threads, "torch": torch.__version__,
           "load_average": {"start": load_before, "end": os.getloadavg()},
           "eval_slice": data.info["eval"], "calibration_slice": data.info["calibration"], "seq_len": args.seq_len,
           "prompt_tokens": args.prompt, "decode_tokens": args.decode_tokens, "repeats": args.repeats,
           "sentiment_samples": args.sentiment, "arms": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
