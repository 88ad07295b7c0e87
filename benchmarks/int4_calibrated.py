"""Calibrated int4 (AutoRound SignRound) against round-to-nearest int4 on the same grid, through the
``autoround`` quantizer plugin.

For each group size: the plugin with ``method=rtn`` (plain round-to-nearest, symmetric, float16 scales) and
with ``method=signround`` (AutoRound's tuned rounding/clipping, ``--iters`` steps per block, calibrated on the
``data.calibration`` windows), both int4 symmetric, then each result with the input embedding (tied to lm_head)
kept float32, rounded to int8 or to int4 (``quantizer.embedding``; the plugin rounds the table after the Linear
layers, so the variants reuse one AutoRound run). Measured per point: perplexity on the eval slice (tail of the
Wikipedia sample, never calibrated on), 2-shot sentiment accuracy, stored bits per weight (codes + float16
scales; float weights at 32 bits; over every Linear and the embedding, the tied lm_head counted once), artifact
size on disk (compressed-tensors pack-quantized, without the tokenizer) and quantize time. 1 thread.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/int4_calibrated.py --model smollm2-135m --groups 64,96 \
        --out benchmarks/int4_calibrated_smollm2.json
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/int4_calibrated.py --model gemma3-270m --groups 64,128 \
        --ppl-batch 1 --out benchmarks/int4_calibrated_gemma3.json

Arms can run in parallel processes (``--methods``/``--groups``/``--embeddings`` select them, ``--skip-fp32`` leaves
the fp32 point to one of them); ``benchmarks/int4_calibrated_table.py`` merges the JSON files into the tables.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from slimkit.core.artifact import directory_size
from slimkit.core.state import PipelineState
from slimkit.data import build_splits
from slimkit.evaluation import perplexity
from slimkit.evaluation.tasks import sentiment_accuracy
from slimkit.models import load_model


def evaluate(model, tokenizer, data, args) -> dict:
    t = time.perf_counter()
    ppl = perplexity(model, data.eval, args.ppl_batch, desc="perplexity")
    acc = sentiment_accuracy(model, tokenizer, samples=args.task_samples, batch_size=args.task_batch)
    return {"perplexity": ppl, "sentiment_accuracy": acc, "eval_seconds": round(time.perf_counter() - t, 1)}


def artifact_bytes(stage, model) -> int:
    with tempfile.TemporaryDirectory(prefix="int4-bench-") as tmp:
        stage.save(model, Path(tmp))
        return directory_size(tmp)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--groups", default="64,96", help="group sizes (each must divide every layer's input width)")
    ap.add_argument("--methods", default="rtn,signround", help="rtn, optrtn, awq, signround")
    ap.add_argument("--embeddings", default="float,int8,int4")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--calibration-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--task-samples", type=int, default=200)
    ap.add_argument("--task-batch", type=int, default=8)
    ap.add_argument("--ppl-batch", type=int, default=4)
    ap.add_argument("--skip-fp32", action="store_true", help="no fp32 point (another process of the same "
                    "settings measures it: arms run in parallel processes on a loaded machine)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from slimkit_autoround import AutoRoundConfig, AutoRoundQuantizer, quantize_embedding, stored_bits_per_weight
    from slimkit_autoround.layout import ATTRIBUTE

    loaded = load_model(args.model)
    data = build_splits(loaded.tokenizer, seq_len=args.seq_len, train_tokens=32768,
                        calibration_samples=args.calibration_samples, eval_tokens=args.eval_tokens)
    reference = loaded.model.eval().requires_grad_(False)
    out = Path(args.out)
    results: dict = {"model": loaded.provenance, "parameters": loaded.parameters, "threads": torch.get_num_threads(),
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_start": os.getloadavg(),
                     "eval_slice": data.info["eval"], "calibration_slice": data.info["calibration"],
                     "task": f"2-shot sentiment, {args.task_samples} balanced sentences", "args": vars(args),
                     "scheme": "int4 symmetric, one float16 scale per group of input features", "points": []}
    if not args.skip_fp32:
        t = time.perf_counter()
        results["fp32"] = {**evaluate(reference, loaded.tokenizer, data, args),
                           "stored_bits_per_weight": stored_bits_per_weight(reference)}
        with tempfile.TemporaryDirectory(prefix="int4-bench-") as tmp:
            reference.save_pretrained(tmp, safe_serialization=True)
            results["fp32"]["size_bytes"] = directory_size(tmp)
        print("fp32", json.dumps(results["fp32"]), f"{time.perf_counter() - t:.0f}s", flush=True)
        out.write_text(json.dumps(results, indent=1))
    for group in map(int, args.groups.split(",")):
        for method in args.methods.split(","):
            # "optrtn": AutoRound's activation-weighted (imatrix) scale search, no gradient steps
            values = {"bits": 4, "group_size": group, "sym": True, "method": "rtn" if method == "optrtn" else method,
                      "optimized_rtn": method == "optrtn", "embedding": "float"}
            if method == "signround":
                values["iters"] = args.iters
            stage = AutoRoundQuantizer(AutoRoundConfig(**values))
            state = PipelineState(copy.deepcopy(reference), loaded.tokenizer, data, reference,
                                  work_dir=Path(tempfile.gettempdir()), seed=0)
            start = time.perf_counter()
            metrics = stage.apply(state)
            seconds = time.perf_counter() - start
            for embedding in args.embeddings.split(","):
                model = state.model if embedding == "float" else copy.deepcopy(state.model)
                if embedding != "float":
                    quantize_embedding(model, int(embedding[3:]), group)
                point = {"group_size": group, "method": method, "iters": values.get("iters", 0),
                         "embedding": embedding, "quantize_seconds": round(seconds, 1),
                         "calibration_windows": metrics["calibration_windows"],
                         "stored_bits_per_weight": stored_bits_per_weight(model),
                         "size_bytes": artifact_bytes(stage, model),
                         "int4_modules": sum(1 for m in model.modules() if getattr(getattr(m, ATTRIBUTE, None), "bits", 0) == 4),
                         **evaluate(model, loaded.tokenizer, data, args), "load_average": os.getloadavg()}
                for key in ("perplexity", "sentiment_accuracy", "size_bytes"):
                    if "fp32" in results:
                        point[f"{key}_vs_fp32"] = point[key] / results["fp32"][key]
                results["points"].append(point)
                print(json.dumps(point), flush=True)
                out.write_text(json.dumps(results, indent=1))
                if model is not state.model:
                    del model
                gc.collect()
            del state
            gc.collect()
    results["load_average_end"] = os.getloadavg()
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
