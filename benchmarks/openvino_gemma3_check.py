"""Gemma-3-270M through the ``openvino`` exporter: does the stateful IR give PyTorch's logits and greedy tokens
across the 512-token sliding window?

    OMP_NUM_THREADS=1 python benchmarks/openvino_gemma3_check.py --out benchmarks/openvino_gemma3_check.json

fp32 weights, f32 inference and KV cache (the exporter's exact mode): max/mean |Δlogit| of a prefill of
``--tokens`` held-out tokens (longer than the window), and ``--new-tokens`` greedy tokens from a prompt that ends
just before the window so the decode crosses it, compared with ``model.generate``. Correctness only: no timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--tokens", type=int, default=600)
    parser.add_argument("--prompt-tokens", type=int, default=505)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    if Path(args.out).exists():
        parser.error(f"{args.out} exists; results files are never overwritten: choose a new name")
    import openvino
    from slimkit_openvino import OpenVinoConfig, OpenVinoExporter

    from slimkit.data import build_splits
    from slimkit.evaluation import model_logits
    from slimkit.models import load_model

    torch.set_num_threads(1)
    loaded = load_model(args.model)
    model = loaded.model.eval()
    ids = build_splits(loaded.tokenizer, eval_tokens=4096).eval.reshape(1, -1)[:, :args.tokens]
    with tempfile.TemporaryDirectory(prefix="openvino-gemma3-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        facts = OpenVinoExporter(OpenVinoConfig()).export(Path(loaded.path), model, loaded.tokenizer, folder)
        export_s = time.perf_counter() - start
        session = OpenVinoExporter.open(folder, threads=1)
        diff = (session.logits(ids) - model_logits(model, ids)).abs()
        prompt = ids[:, :args.prompt_tokens]
        expected = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                  do_sample=False)[0, args.prompt_tokens:].tolist()
        got = session.generate(prompt, args.new_tokens)
    report = {
        "command": "python " + " ".join(__import__("sys").argv), "model": {"name": args.model,
                                                                           "provenance": loaded.provenance},
        "model_type": model.config.model_type, "sliding_window": model.config.sliding_window,
        "layer_types": sorted(set(model.config.layer_types)), "export_seconds": round(export_s, 1),
        "facts": facts, "prefill_tokens": args.tokens,
        "prefill_max_abs_logit_diff": diff.max().item(), "prefill_mean_abs_logit_diff": diff.mean().item(),
        "prompt_tokens": args.prompt_tokens, "greedy_tokens_openvino": got, "greedy_tokens_pytorch": expected,
        "greedy_equal": got == expected,
        "versions": {"torch": torch.__version__, "openvino": openvino.get_version(),
                     "python": platform.python_version()},
        "load_average": list(os.getloadavg()),
    }
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: report[k] for k in ("prefill_max_abs_logit_diff", "greedy_equal", "export_seconds")}))


if __name__ == "__main__":
    main()
