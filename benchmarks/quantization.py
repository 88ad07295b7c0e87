"""Quantization backends on a real model: held-out perplexity, artifact size, prefill and decode
speed against fp32 (timed alternately in this process, 1 thread), uniform int4 vs a budgeted
mixed-precision allocation at the same average bits.

    OMP_NUM_THREADS=1 python benchmarks/quantization.py --model smollm2-135m --out benchmarks/quantization_smollm2.json

Each row quantizes a fresh copy of the fp32 model through the slimkit backend (``stage.apply``),
saves it with the backend's ``save`` and reloads it with ``load`` (sizes and timings are of the
reloaded artifact). Perplexity: the eval slice (the last ``--eval-windows`` × ``--seq-len`` tokens of
the Wikipedia sample); calibration and the sensitivity scan use windows from the head of the stream.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROWS = {
    # label: (backend, config)
    "fp32": (None, {}),
    "quanto w8": ("quanto", {"bits": 8}),
    "quanto w4 (g96/128)": ("quanto", {"bits": 4}),
    "quanto w8a8": ("quanto", {"bits": 8, "activations": 8}),
    "bnb int8 (t=6)": ("bnb", {"bits": 8, "threshold": 6.0}),
    "bnb nf4 (dq)": ("bnb", {"bits": 4, "quant_type": "nf4", "double_quant": True}),
    "quanto budget 4.0 b {2,4,8}": ("quanto", {"bits": 4, "budget_bits": 4.0, "budget_candidates": [2, 4, 8],
                                               "scan_unit": "block", "scan_windows": 2}),
    # equal average bits (4.267 over the decoder Linears): hand-picked first/last block at int8 vs the scan's pick
    "quanto w4 + int8 blocks 0,29": ("quanto", {"bits": 4, "overrides": {"model.layers.0.*": 8, "model.layers.29.*": 8}}),
    "quanto budget 4.267 b {4,8}": ("quanto", {"bits": 4, "budget_bits": 4.2667, "budget_candidates": [4, 8],
                                               "scan_unit": "block", "scan_windows": 2}),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--calibration", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help="row labels to run (default: all)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from slimkit.artifact import directory_size
    from slimkit.data import build_splits
    from slimkit.evaluate import latency, model_logits, perplexity
    from slimkit.models import load_model
    from slimkit.registry import default_registry
    from slimkit.plugin import Kind
    from slimkit.state import PipelineState

    loaded = load_model(args.model)
    fp32 = loaded.model.eval()
    data = build_splits(loaded.tokenizer, seq_len=args.seq_len, train_tokens=max(args.calibration, 8) * args.seq_len,
                        calibration_samples=args.calibration, eval_tokens=args.eval_windows * args.seq_len)
    prompt = data.eval[:1, : args.prompt_tokens]
    registry = default_registry()
    results = {"model": args.model, "provenance": loaded.provenance, "data": data.info, "threads": 1,
               "args": vars(args), "torch": torch.__version__, "rows": []}
    work = Path(tempfile.mkdtemp(prefix="slimkit-qbench-"))
    print(f"model {args.model}; eval {data.info['eval']}; work dir {work}", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        fp32.save_pretrained(tmp, safe_serialization=True)
        fp32_bytes = directory_size(tmp)
    for label in args.rows:
        backend, values = ROWS[label]
        row = {"label": label, "backend": backend, "config": values}
        start = time.perf_counter()
        if backend is None:
            model, row["size_bytes"] = fp32, fp32_bytes
        else:
            cls = registry.get(Kind.QUANTIZER, backend)
            stage = cls(cls.Config(**values))
            state = PipelineState(copy.deepcopy(fp32), loaded.tokenizer, data, fp32, work_dir=work / label.replace(" ", "_"))
            metrics = stage.apply(state)
            row["apply_s"] = round(time.perf_counter() - start, 1)
            row["effective_bits_per_weight"] = metrics["effective_bits_per_weight"]
            row["quantized_bits_per_weight"] = metrics["quantized_bits_per_weight"]
            row["precision_counts"] = metrics["precision_counts"]
            if "budget" in metrics:
                row["budget"] = {k: v for k, v in metrics["budget"].items() if k != "files"}
                row["allocation"] = {k: v for k, v in metrics["precision_map"].items()}
                row["scan_files"] = metrics["budget"]["files"]
            with tempfile.TemporaryDirectory() as tmp:
                stage.save(state.model, Path(tmp))
                row["size_bytes"] = directory_size(tmp)
                model = cls.load(Path(tmp), {})
            probe = data.eval[:1, :64]
            row["reload_max_abs_logit_diff"] = (model_logits(model, probe) - model_logits(state.model, probe)).abs().max().item()
            del state
            gc.collect()
        row["perplexity"] = perplexity(model, data.eval, batch_size=4, desc=f"ppl {label}")
        timed = latency({"fp32": fp32, label: model} if backend else {"fp32": fp32}, prompt, threads=1,
                        repeats=args.repeats, decode_tokens=args.decode_tokens)
        row.update({k: timed[label][k] for k in ("prefill_ms", "decode_tokens_per_s")} if backend else timed["fp32"])
        row["fp32_prefill_ms"] = timed["fp32"]["prefill_ms"]
        row["fp32_decode_tokens_per_s"] = timed["fp32"]["decode_tokens_per_s"]
        row["prefill_speedup"] = row["fp32_prefill_ms"] / row["prefill_ms"]
        row["decode_speedup"] = row["decode_tokens_per_s"] / row["fp32_decode_tokens_per_s"]
        row["seconds"] = round(time.perf_counter() - start, 1)
        results["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "allocation"}), file=sys.stderr, flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))
        if backend is not None:
            del model
            gc.collect()
    print(table(results))
    return 0


def table(results) -> str:
    """The results as a markdown table."""
    base = next((r for r in results["rows"] if r["backend"] is None), None)
    lines = ["| config | bits (quantized set) | eff. bits (all Linear) | ppl | ppl ×fp32 | MB on disk | prefill speedup "
             "| decode speedup | reload Δ |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        ratio = r["perplexity"] / base["perplexity"] if base else float("nan")
        bits = r.get("effective_bits_per_weight")
        qbits = r.get("quantized_bits_per_weight")
        lines.append(f"| {r['label']} | {qbits:.2f} | {bits:.2f} | " if bits is not None else f"| {r['label']} | – | 32 | ")
        lines[-1] += (f"{r['perplexity']:.2f} | {ratio:.3f} | {r['size_bytes'] / 1e6:.1f} | {r['prefill_speedup']:.2f} | "
                      f"{r['decode_speedup']:.2f} | {r.get('reload_max_abs_logit_diff', 0):.1g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
