"""Case study frontier: size and speed of each structured MLP cut followed by int8, against fp32, in one process.

Size and speed depend on the architecture, not on how well the pruned model was recovered, so this
script prunes the original (``torch_pruning``, activation importance, the case-study settings), applies
``quantizer=int8`` (defaults), saves each artifact and times all of them alternately with the fp32
original (``slimkit.evaluation.latency``, threads pinned, medians). Quality for the same cuts comes from
runs that did recover them (``case_study_explore.json``: kd steps, 2-shot sentiment after int8) and from
the full preset's ``report.json``; ``--plot`` joins the three into one figure.

    OMP_NUM_THREADS=1 python benchmarks/case_study_frontier.py --cuts 0,0.1,0.2,0.35 --out benchmarks/case_study_frontier.json
    python benchmarks/case_study_frontier.py --plot benchmarks/case_study_frontier.json \
        --explore benchmarks/case_study_explore.json --report benchmarks/case_study_report.json \
        --png benchmarks/case_study_frontier.png
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from slimkit.core.artifact import directory_size
from slimkit.data import build_splits
from slimkit.evaluation import latency
from slimkit.models import count_parameters, load_model
from slimkit.core.state import PipelineState


def build(original, tok, data, cut: float, work: Path):
    """The original pruned by ``cut`` of its MLP channels (none for 0), then int8, saved under ``work``;
    returns (model, parameters before int8, artifact bytes)."""
    from slimkit_int8 import Int8Config, Int8Quantizer
    from slimkit_torch_pruning import StructuredPruner, StructuredPruningConfig

    state = PipelineState(copy.deepcopy(original), tok, data, original, work_dir=work, seed=0)
    if cut > 0:
        StructuredPruner(StructuredPruningConfig(sparsity=cut, importance="activation", heads_sparsity=0.0)).apply(state)
    params = count_parameters(state.model)
    stage = Int8Quantizer(Int8Config())
    stage.apply(state)
    folder = work / f"mlp{cut}"
    folder.mkdir()
    stage.save(state.model, folder)
    return state.model, params, directory_size(folder)


def measure(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()
    loaded = load_model(args.model)
    tok, original = loaded.tokenizer, loaded.model.eval()
    data = build_splits(tok, seq_len=256, train_tokens=16 * 256, calibration_samples=16, eval_tokens=4 * 256)
    models, rows = {"fp32": original}, {}
    with tempfile.TemporaryDirectory(prefix="frontier-") as tmp:  # the artifacts are saved only to be sized
        work = Path(tmp)
        original.save_pretrained(work / "fp32", safe_serialization=True)
        fp32_bytes = directory_size(work / "fp32")
        for cut in (float(c) for c in args.cuts.split(",")):
            t0 = time.perf_counter()
            model, params, size = build(original, tok, data, cut, work)
            name = f"MLP {cut:.0%} + int8"
            models[name] = model
            rows[name] = {"mlp_cut": cut, "parameters": params, "size_bytes": size, "size_ratio": fp32_bytes / size,
                          "build_s": round(time.perf_counter() - t0, 1)}
            print(name, rows[name], flush=True)
    timing = latency(models, data.eval[:1, : args.prompt], threads=args.threads, repeats=args.repeats,
                     decode_tokens=args.decode_tokens)
    base = timing["fp32"]
    for name, row in rows.items():
        t = timing[name]
        row.update(prefill_ms=t["prefill_ms"], decode_tokens_per_s=t["decode_tokens_per_s"],
                   prefill_speedup=base["prefill_ms"] / t["prefill_ms"],
                   decode_speedup=t["decode_tokens_per_s"] / base["decode_tokens_per_s"])
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    out = {"model": args.model, "provenance": loaded.provenance, "torch": torch.__version__, "threads": args.threads,
           "prompt_tokens": args.prompt, "decode_tokens": args.decode_tokens, "repeats": args.repeats,
           "load_average": {"start": load_start, "end": os.getloadavg()},
           "fp32": {"parameters": count_parameters(original), "size_bytes": fp32_bytes, **base}, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))


def plot(args) -> None:
    """Size ratio vs sentiment retained, one point per recovered cut + int8, labelled with the speed-ups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frontier = json.loads(Path(args.plot).read_text())
    by_cut = {round(r["mlp_cut"], 3): r for r in frontier["rows"].values()}
    points = []  # (label, size ratio, retained, prefill x, decode x)
    explore = json.loads(Path(args.explore).read_text())["rows"] if args.explore else []
    base = next((r for r in explore if r["setting"] == "fp32 original"), None)
    for r in explore:
        if "sentiment_int8" not in r or base is None:
            continue
        cut = 0.0 if r["setting"] == "fp32 original" else float(r["setting"][3:])
        if round(cut, 3) in by_cut:
            f = by_cut[round(cut, 3)]
            kd = f", {r['steps']} kd steps" if r.get("steps") else ""
            points.append((f"MLP {cut:.0%}{kd} + int8" if cut else "int8 alone", f["size_ratio"], r["sentiment_int8"] / base["sentiment"],
                           f["prefill_speedup"], f["decode_speedup"]))
    if args.report:
        rep = json.loads(Path(args.report).read_text())
        ratios = rep["ratios"]
        points.append(("case_study preset (full run)", ratios["size"], ratios["sentiment_retained"],
                       ratios["prefill_speed"], ratios["speed"]))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.axhline(0.97, color="tab:green", ls="--", lw=1, label="target: 97% of task accuracy kept")
    ax.axvline(5, color="tab:green", ls=":", lw=1, label="target: 5x smaller")
    for label, size, kept, pre, dec in points:
        preset = "preset" in label
        ax.scatter(size, kept, s=60, color="tab:red" if preset else "tab:blue", zorder=3)
        ax.annotate(f"{label}\nprefill {pre:.2f}x, decode {dec:.2f}x", (size, kept), fontsize=7,
                    xytext=(6, -26) if preset else (5, 4), textcoords="offset points",
                    color="tab:red" if preset else "black")
    ax.set_xlabel("size ratio vs fp32 artifact (x smaller)")
    ax.set_ylabel("2-shot sentiment accuracy retained (vs fp32, 200 sentences)")
    ax.set_title(f"Case study frontier on {frontier['model']} (threads={frontier['threads']}; target also 3x faster)")
    sizes = [p[1] for p in points] or [5.0]
    ax.set_xlim(min(min(sizes), 5.0) - 0.3, max(max(sizes), 5.0) + 0.8)
    ax.set_ylim(min([0.5] + [p[2] - 0.05 for p in points]), 1.05)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    tmp = Path(args.png).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130)
    tmp.replace(args.png)
    print("wrote", args.png, "with", len(points), "points")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cuts", default="0,0.1,0.2,0.35", help="MLP channel fractions to remove (0: int8 only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/case_study_frontier.json")
    ap.add_argument("--plot", help="a --out JSON of this script: draw the frontier instead of measuring")
    ap.add_argument("--explore", help="case_study_explore.json (quality of the recovered cuts)")
    ap.add_argument("--report", help="report.json of a full `slimkit experiment=case_study` run")
    ap.add_argument("--png", default="benchmarks/case_study_frontier.png")
    args = ap.parse_args()
    plot(args) if args.plot else measure(args)


if __name__ == "__main__":
    main()
