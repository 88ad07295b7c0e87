"""Merge ``int4_calibrated.py`` result files of one model (arms run as parallel processes) into a Markdown table,
with ratios against the fp32 point of the file that has one.

    python benchmarks/int4_calibrated_table.py benchmarks/int4_calibrated_smollm2.json benchmarks/int4_calibrated_smollm2_sr64.json
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> None:
    runs = [json.loads(open(p).read()) for p in paths]
    fp32 = next(r["fp32"] for r in runs if "fp32" in r)
    keys = {(r["args"]["eval_tokens"], r["args"]["task_samples"], r["args"]["seq_len"]) for r in runs}
    if len(keys) != 1:
        raise SystemExit(f"the files were measured with different settings: {keys}")
    print(f"fp32: perplexity {fp32['perplexity']:.2f}, sentiment {fp32['sentiment_accuracy']:.3f}, "
          f"{fp32['size_bytes'] / 1e6:.1f} MB, {fp32['stored_bits_per_weight']:.0f} bits/weight\n")
    print("| group | method | embedding | bits/weight | MB (×smaller) | perplexity (×fp32) | sentiment (% of fp32) "
          "| quantize s | file |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for path, run in zip(paths, runs):
        for p in run["points"]:
            rows.append((p["group_size"], p["embedding"], p["method"], p, path.rsplit("/", 1)[-1]))
    for group, embedding, method, p, name in sorted(rows, key=lambda r: (r[0], r[1], r[2])):
        label = {"rtn": "RTN", "optrtn": f"opt-RTN, {p['calibration_windows']} windows",
                 "awq": f"AWQ, {p['calibration_windows']} windows"}.get(
            p["method"], f"SignRound {p['iters']} it, {p['calibration_windows']} windows")
        print(f"| {group} | {label} | {embedding} | {p['stored_bits_per_weight']:.2f} | "
              f"{p['size_bytes'] / 1e6:.1f} ({fp32['size_bytes'] / p['size_bytes']:.2f}×) | "
              f"{p['perplexity']:.2f} (×{p['perplexity'] / fp32['perplexity']:.3f}) | "
              f"{p['sentiment_accuracy']:.3f} ({100 * p['sentiment_accuracy'] / fp32['sentiment_accuracy']:.1f}%) | "
              f"{p['quantize_seconds']:.0f} | {name} |")


if __name__ == "__main__":
    main(sys.argv[1:])
