"""Quantization backends on a real model: held-out perplexity, few-shot task accuracy, artifact
size, peak memory of a process that runs the artifact, prefill and decode speed against fp32 (timed
alternately in this process, 1 thread), uniform int4 vs a budgeted mixed-precision allocation at the
same average bits.

    OMP_NUM_THREADS=1 python benchmarks/quantization.py --model smollm2-135m --out /tmp/qbench/smollm2.json

Each row quantizes a fresh copy of the fp32 model through the slimkit backend (``stage.apply``),
saves it as a slimkit artifact (the backend's ``save`` plus a ``slimkit.json`` manifest naming the
writer) and reloads it with ``slimkit.pipeline.load``; perplexity, task accuracy, size and timings are
of the reloaded artifact. Perplexity: the eval slice (the last ``--eval-windows`` × ``--seq-len``
tokens of the Wikipedia sample); calibration and the sensitivity scan use windows from the head of
the stream. Task accuracy: ``slimkit.evaluation.tasks.sentiment_accuracy`` (2-shot, ``--sentiment`` balanced
Rotten Tomatoes sentences). Peak memory: a fresh subprocess (``--measure-memory DIR``) imports
torch/transformers/slimkit, loads the artifact with ``slimkit.pipeline.load``, runs one
``--prompt-tokens`` prefill and ``--memory-decode`` greedy decode steps with the KV cache, and reports
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (after the imports, after the load, and at the end);
fp32 is measured the same way from its ``save_pretrained`` artifact.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import shlex
import shutil
import subprocess
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
    "quanto w8a8": ("quanto", {"bits": 8, "activations": "int8-tensor"}),
    "bnb int8 (t=6)": ("bnb", {"bits": 8, "threshold": 6.0}),
    "bnb nf4 (dq)": ("bnb", {"bits": 4, "quant_type": "nf4", "double_quant": True}),
    "quanto budget 4.0 b {2,4,8}": ("quanto", {"bits": 4, "budget_bits": 4.0, "budget_candidates": [2, 4, 8],
                                               "scan_unit": "block", "scan_windows": 2}),
    # equal average bits (4.267 over the decoder Linears): hand-picked first/last block at int8 vs the scan's pick
    "quanto w4 + int8 blocks 0,29": ("quanto", {"bits": 4, "overrides": {"model.layers.0.*": 8, "model.layers.29.*": 8}}),
    "quanto budget 4.267 b {4,8}": ("quanto", {"bits": 4, "budget_bits": 4.2667, "budget_candidates": [4, 8],
                                               "scan_unit": "block", "scan_windows": 2}),
    # the same comparison on Gemma-3-270M (18 blocks: two int8 blocks give 4 + 4*2/18 = 4.444 average bits)
    "quanto w4 + int8 blocks 0,17": ("quanto", {"bits": 4, "overrides": {"model.layers.0.*": 8, "model.layers.17.*": 8}}),
    "quanto budget 4.444 b {4,8}": ("quanto", {"bits": 4, "budget_bits": 4.4445, "budget_candidates": [4, 8],
                                               "scan_unit": "block", "scan_windows": 2}),
    # SmoothQuant + per-token int8 activations on fast kernels; defaults: fused q/k/v and gate/up GEMMs,
    # lm_head int8, the embedding table int8 and shared with the tied lm_head
    "int8 (smooth, emb int8)": ("int8", {"embedding": "int8"}),
    "int8 (no smooth, emb int8)": ("int8", {"embedding": "int8", "smooth": False}),
}

MEMORY_SCRIPT_NOTE = "peak RSS of a fresh process: imports, slimkit.pipeline.load, one prefill, a few decode steps"


def measure_memory(directory: str, prompt_file: str, decode_steps: int) -> dict:
    """Run in a fresh process: load the artifact, prefill, decode; return ru_maxrss (MB) at each step."""
    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    torch.set_num_threads(1)
    import transformers  # noqa: F401  (counted in the baseline, as a user's process would)
    from slimkit.pipeline import load

    out = {"after_imports_mb": peak_mb()}
    start = time.perf_counter()
    model = load(directory)
    out["load_s"] = round(time.perf_counter() - start, 1)
    out["after_load_mb"] = peak_mb()
    prompt = torch.tensor(json.loads(Path(prompt_file).read_text()), dtype=torch.long)
    with torch.no_grad():
        result = model(input_ids=prompt, use_cache=True)
        cache, token = result.cache, result.logits[:, -1:].argmax(-1)
        out["after_prefill_mb"] = peak_mb()
        for _ in range(decode_steps):
            result = model(input_ids=token, cache=cache, use_cache=True)
            cache, token = result.cache, result.logits[:, -1:].argmax(-1)
    out["peak_mb"] = peak_mb()
    status = Path("/proc/self/status")
    if status.is_file():  # cross-check: the high-water RSS of this process image alone
        hwm = [line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
        out["vm_hwm_mb"] = int(hwm[0]) / 1024 if hwm else None
    del result, cache
    gc.collect()
    if status.is_file():  # what stays resident once loading is over (the peak may be a transient of the load)
        rss = [line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmRSS:")]
        out["rss_end_mb"] = int(rss[0]) / 1024 if rss else None
    out.update({"prompt_tokens": prompt.shape[1], "decode_steps": decode_steps})
    return out


def peak_memory(directory: Path, prompt: torch.Tensor, decode_steps: int) -> dict:
    """Peak memory of a fresh subprocess that runs the artifact in ``directory`` (see ``measure_memory``)."""
    prompt_file = directory.parent / "prompt_ids.json"
    prompt_file.write_text(json.dumps(prompt.tolist()))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # Linux carries the high-water RSS of the image a process exec()s from into ru_maxrss, so a child
    # forked straight from this (large) process would report at least this process's size: start the
    # measured process from a small shell that forks it (``; exit`` keeps sh from exec()ing it in place).
    command = " ".join(map(shlex.quote, [sys.executable, __file__, "--measure-memory", str(directory), "--prompt-file",
                                         str(prompt_file), "--memory-decode", str(decode_steps)]))
    proc = subprocess.run(["/bin/sh", "-c", command + "; exit $?"], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_artifact(directory: Path, writer: dict | None) -> None:
    """Finish a saved model folder as a slimkit artifact (manifest naming the writer), as the pipeline does."""
    from slimkit.core.artifact import write_manifest

    write_manifest(directory, {"writer": writer, "stages": [writer] if writer else [], "model": {}})


def source_state() -> dict:
    """The git commit and which plugin/framework files had uncommitted changes when this ran."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--short", "--", "framework", "plugins"], cwd=root,
                               capture_output=True, text=True).stdout.split("\n")
        return {"commit": head, "uncommitted": [d.strip() for d in dirty if d.strip()]}
    except OSError:
        return {}


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
    parser.add_argument("--ppl-batch", type=int, default=4, help="perplexity batch (1 for Gemma's 262k vocabulary)")
    parser.add_argument("--sentiment", type=int, default=200, help="few-shot sentiment examples (0: skip the column)")
    parser.add_argument("--task-batch", type=int, default=8, help="sentiment batch size")
    parser.add_argument("--memory-decode", type=int, default=4, help="decode steps in the peak-memory process")
    parser.add_argument("--skip", nargs="*", default=[], choices=["latency", "memory", "sentiment", "perplexity"],
                        help="columns not to measure")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--render", nargs="*", default=None, help="print the tables of these result JSON files and exit")
    parser.add_argument("--merge", nargs="*", default=None,
                        help="print one table of these result JSON files, later files filling columns by row label")
    parser.add_argument("--measure-memory", default=None, help=argparse.SUPPRESS)  # the peak-memory subprocess
    parser.add_argument("--prompt-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.measure_memory:
        print(json.dumps(measure_memory(args.measure_memory, args.prompt_file, args.memory_decode)))
        return 0
    if args.render is not None:
        for f in args.render:
            print(f"### {f}\n\n{table(json.loads(Path(f).read_text()))}\n")
        return 0
    if args.merge is not None:  # columns measured in a second pass (e.g. --skip everything but sentiment)
        print(table(merge([json.loads(Path(f).read_text()) for f in args.merge])))
        return 0
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown row {unknown[0]!r}; rows: {list(ROWS)}")

    from slimkit.core.artifact import directory_size
    from slimkit.data import build_splits
    from slimkit.evaluation import latency, model_logits, perplexity
    from slimkit.models import load_model
    from slimkit.core.registry import default_registry
    from slimkit.core.plugin import Kind
    from slimkit.core.state import PipelineState
    from slimkit.pipeline import load
    from slimkit.evaluation.tasks import sentiment_accuracy

    loaded = load_model(args.model)
    fp32 = loaded.model.eval()
    data = build_splits(loaded.tokenizer, seq_len=args.seq_len, train_tokens=max(args.calibration, 8) * args.seq_len,
                        calibration_samples=args.calibration, eval_tokens=args.eval_windows * args.seq_len)
    prompt = data.eval[:1, : args.prompt_tokens]
    registry = default_registry()
    results = {"model": args.model, "provenance": loaded.provenance, "data": data.info, "threads": 1,
               "args": vars(args), "torch": torch.__version__, "source": source_state(),
               "load_average_start": os.getloadavg(), "memory_method": MEMORY_SCRIPT_NOTE, "rows": []}
    work = Path(tempfile.mkdtemp(prefix="slimkit-qbench-"))
    print(f"model {args.model}; eval {data.info['eval']}; work dir {work}", file=sys.stderr)

    fp32_dir = work / "fp32" / "artifact"
    fp32_dir.mkdir(parents=True)
    fp32.save_pretrained(fp32_dir, safe_serialization=True)
    fp32_bytes = directory_size(fp32_dir)
    write_artifact(fp32_dir, None)
    for label in args.rows:
        backend, values = ROWS[label]
        row = {"label": label, "backend": backend, "config": values, "load_average_before": os.getloadavg()}
        start = time.perf_counter()
        phases = {}
        artifact_dir = fp32_dir
        if backend is None:
            model, row["size_bytes"] = fp32, fp32_bytes
        else:
            cls = registry.get(Kind.QUANTIZER, backend)
            stage = cls(cls.Config(**values))
            state = PipelineState(copy.deepcopy(fp32), loaded.tokenizer, data, fp32, work_dir=work / label.replace(" ", "_"))
            metrics = stage.apply(state)
            phases["apply"] = time.perf_counter() - start
            row["apply_s"] = round(time.perf_counter() - start, 1)
            row["effective_bits_per_weight"] = metrics["effective_bits_per_weight"]
            row["quantized_bits_per_weight"] = metrics["quantized_bits_per_weight"]
            row["precision_counts"] = metrics["precision_counts"]
            if "budget" in metrics:
                row["budget"] = {k: v for k, v in metrics["budget"].items() if k != "files"}
                row["allocation"] = {k: v for k, v in metrics["precision_map"].items()}
                row["scan_files"] = metrics["budget"]["files"]
            for key in ("embedding", "fused_linears", "smoothing", "quantized_modules"):
                if key in metrics:
                    row[key] = metrics[key]
            artifact_dir = work / label.replace(" ", "_") / "artifact"
            artifact_dir.mkdir(parents=True)
            stage.save(state.model, artifact_dir)
            row["size_bytes"] = directory_size(artifact_dir)  # before the manifest: the backend's files only
            write_artifact(artifact_dir, {"kind": Kind.QUANTIZER.value, "backend": backend, "config": values})
            model = load(artifact_dir)
            probe = data.eval[:1, :64]
            row["reload_max_abs_logit_diff"] = (model_logits(model, probe) - model_logits(state.model, probe)).abs().max().item()
            del state
            gc.collect()
        phases["reload"] = time.perf_counter() - start - sum(phases.values())
        if "perplexity" not in args.skip:
            row["perplexity"] = perplexity(model, data.eval, batch_size=args.ppl_batch, desc=f"ppl {label}")
        phases["perplexity"] = time.perf_counter() - start - sum(phases.values())
        if "sentiment" not in args.skip and args.sentiment > 0:
            t0 = time.perf_counter()
            row["sentiment_accuracy"] = sentiment_accuracy(model, loaded.tokenizer, samples=args.sentiment,
                                                           batch_size=args.task_batch, desc=f"sentiment {label}")
            row["sentiment_samples"] = args.sentiment
            row["sentiment_s"] = round(time.perf_counter() - t0, 1)
        phases["sentiment"] = time.perf_counter() - start - sum(phases.values())
        if "latency" not in args.skip:
            timed = latency({"fp32": fp32, label: model} if backend else {"fp32": fp32}, prompt, threads=1,
                            repeats=args.repeats, decode_tokens=args.decode_tokens)
            row.update({k: timed[label][k] for k in ("prefill_ms", "decode_tokens_per_s")} if backend else timed["fp32"])
            row["fp32_prefill_ms"] = timed["fp32"]["prefill_ms"]
            row["fp32_decode_tokens_per_s"] = timed["fp32"]["decode_tokens_per_s"]
            row["prefill_speedup"] = row["fp32_prefill_ms"] / row["prefill_ms"]
            row["decode_speedup"] = row["decode_tokens_per_s"] / row["fp32_decode_tokens_per_s"]
        phases["latency"] = time.perf_counter() - start - sum(phases.values())
        if "memory" not in args.skip:
            row["memory"] = peak_memory(artifact_dir, prompt, args.memory_decode)
        phases["memory"] = time.perf_counter() - start - sum(phases.values())
        if row.get("scan_files") and args.out:  # keep the sensitivity table/heatmap beside the results
            files = row["scan_files"].values() if isinstance(row["scan_files"], dict) else row["scan_files"]
            for f in map(Path, files):
                if f.is_file():
                    shutil.copy(f, Path(args.out).parent / f"{Path(args.out).stem}_{f.name}")
        if backend is not None:
            shutil.rmtree(artifact_dir.parent, ignore_errors=True)
        row["load_average_after"] = os.getloadavg()
        row["phase_s"] = {k: round(v, 1) for k, v in phases.items()}
        row["seconds"] = round(time.perf_counter() - start, 1)
        results["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "allocation"}), file=sys.stderr, flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))
        if backend is not None:
            del model
            gc.collect()
    shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    return 0


def merge(parts: list[dict]) -> dict:
    """The first results file, with each row's measured fields filled in from later files' rows of the same label."""
    merged = copy.deepcopy(parts[0])
    for extra in parts[1:]:
        if extra["model"] != merged["model"]:
            raise ValueError(f"cannot merge results of {extra['model']!r} into {merged['model']!r}")
        by_label = {r["label"]: r for r in extra["rows"]}
        for row in merged["rows"]:
            for key in ("perplexity", "sentiment_accuracy", "sentiment_samples", "memory", "prefill_speedup",
                        "decode_speedup"):
                if key not in row and key in by_label.get(row["label"], {}):
                    row[key] = by_label[row["label"]][key]
    return merged


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _ratio(r, base, key) -> float | None:
    if base is None or r.get(key) is None or base.get(key) is None:
        return None
    return r[key] / base[key]


def table(results) -> str:
    """The results as a markdown table (– where a column was not measured)."""
    base = next((r for r in results["rows"] if r["backend"] is None), None)
    lines = ["| config | bits (quantized set) | eff. bits (all Linear) | ppl | ppl ×fp32 | sentiment acc | acc ×fp32 "
             "| MB on disk | peak RSS MB | peak ×fp32 | RSS at end MB | prefill speedup | decode speedup | reload Δ |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        bits = r.get("effective_bits_per_weight")
        qbits = r.get("quantized_bits_per_weight")
        peak = (r.get("memory") or {}).get("peak_mb")
        base_peak = (base.get("memory") or {}).get("peak_mb") if base else None
        cells = [r["label"], _fmt(qbits, ".2f"), _fmt(bits, ".2f") if bits is not None else "32",
                 _fmt(r.get("perplexity"), ".2f"), _fmt(_ratio(r, base, "perplexity"), ".3f"),
                 _fmt(r.get("sentiment_accuracy"), ".3f"), _fmt(_ratio(r, base, "sentiment_accuracy"), ".3f"),
                 _fmt(r["size_bytes"] / 1e6, ".1f"), _fmt(peak, ".0f"),
                 _fmt(peak / base_peak if peak and base_peak else None, ".2f"),
                 _fmt((r.get("memory") or {}).get("rss_end_mb"), ".0f"),
                 _fmt(r.get("prefill_speedup"), ".2f"), _fmt(r.get("decode_speedup"), ".2f"),
                 _fmt(r.get("reload_max_abs_logit_diff", 0), ".1g")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
