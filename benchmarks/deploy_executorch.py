"""ExecuTorch (XNNPACK) exports of SmolLM2-135M (or ``--model gemma3-270m``), measured with the pipeline's deploy metrics.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/deploy_executorch.py --out benchmarks/deploy_executorch_smollm2.json
    python benchmarks/deploy_executorch.py --render benchmarks/deploy_executorch_smollm2.json

Each row is the ``executorch`` exporter plugin (``slimkit_executorch``) on the model slimkit loaded (or, for
``--artifact LABEL=DIR``, on a slimkit artifact loaded with ``slimkit.load``: route (c)): the ``.pte``
is loaded back in ExecuTorch's runtime and measured there — perplexity on the eval windows and 2-shot sentiment on
``--task-samples`` sentences (``slimkit.deploy.evaluate.quality``, on the runtime's logits), size on disk (the
``.pte``; the tokenizer files are not counted), prefill/decode speed against PyTorch fp32 from
``slimkit.deploy.serving.serving_speed`` (fresh processes, each loading only fp32 and the export and timing both
alternately at 1 thread; medians), the peak resident memory of a fresh process that opens the export and runs one
prefill and one decode, and how long each export phase took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROWS = {
    "executorch fp32": {"weights": "fp32"},
    "executorch 8da4w g32 + int8 embedding": {"weights": "8da4w", "group_size": 32, "embedding": "int8"},
    "executorch 8da8w + int8 embedding": {"weights": "8da8w", "embedding": "int8"},
    "executorch 8da4w g32": {"weights": "8da4w", "group_size": 32},
    # (a) at the size of a recipe whose tied table is int8 per row (stored as the embedding and as the lm_head)
    "executorch 8da4w g32 + int8 embedding + 8da8w lm_head": {"weights": "8da4w", "group_size": 32, "embedding": "int8",
                                                              "lm_head": "8da8w"},
}

#: --artifact rows: a slimkit artifact exported with weights=8da4w: its codes carried where XNNPACK holds them
#: (positive scales: the int8 table, and an int4 decoder on quantizer.sym_grid=gptq), the rest re-quantized by
#: torchao on its own int4 grid
ARTIFACT_ROW = {"weights": "8da4w", "group_size": 32}


def peak_memory_mb(code_args: list[str], code: str) -> float:
    done = subprocess.run([sys.executable, "-c", code, *code_args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return float(done.stdout.strip().splitlines()[-1])


#: the child's own peak RSS (MB): ``VmHWM`` (``slimkit.core.memory.peak_rss_bytes``), not ``ru_maxrss``, which on Linux keeps the high-water RSS of the
#: image the child exec()s from (this large process) — the reports committed before this fix were measured that way
PRINT_PEAK = "from slimkit.core.memory import peak_rss_bytes\nprint(peak_rss_bytes() / 2**20)\n"
EXPORT_PEAK = (
    "import json, sys, torch\n"
    "from pathlib import Path\n"
    "from slimkit_executorch import ExecuTorchExporter\n"
    "torch.set_num_threads(1)\n"
    "s = ExecuTorchExporter.open(Path(sys.argv[1]), threads=1)\n"
    "ids = torch.tensor([json.loads(sys.argv[2])])\n"
    "s.logits(ids); s.generate(ids, int(sys.argv[3]))\n"
    + PRINT_PEAK)
TORCH_PEAK = (
    "import json, sys, torch\n"
    "from slimkit.models import load_model\n"
    "from slimkit.deploy.serving import TorchSession\n"
    "torch.set_num_threads(1)\n"
    "s = TorchSession(load_model(sys.argv[1]).model)\n"
    "ids = torch.tensor([json.loads(sys.argv[2])])\n"
    "s.logits(ids); s.generate(ids, int(sys.argv[3]))\n"
    + PRINT_PEAK)


def render(path: str) -> str:
    """The report as a markdown table (what benchmarks/deploy_executorch.md shows)."""
    report = json.loads(Path(path).read_text())
    base = report["baseline_fp32_pytorch"]
    tasks = list(base["tasks"])
    lines = [f"PyTorch fp32: perplexity {base['perplexity']:.2f}, "
             + ", ".join(f"{name} {next(iter(base['tasks'][name].values()))}" for name in tasks)
             + f", {base['size_bytes'] / 1e6:.1f} MB, peak RSS {base['peak_memory_mb']:.0f} MB", "",
             "| row | scheme | ppl (×fp32) | " + " | ".join(tasks) + " | MB (×smaller) | prefill × | decode × | "
             "peak RSS MB | export s (lower) | load avg |", "|---" * (9 + len(tasks)) + "|"]
    for row in report["rows"]:
        facts, speed = row["facts"], row["speed"]
        scores = []
        for name in tasks:
            result = (row.get("tasks") or {}).get(name, {})
            scores.append("–" if result.get("final") is None else
                          f"{result['final']:.3f}" + (f" ({result['retained']:.1%})" if result.get("retained") else ""))
        phases = facts.get("export_phase_seconds", {})
        decode = speed["decode_speedup"]
        lines.append(
            f"| {row['row']} | {facts['scheme']} | {row['perplexity']:.2f} (×{row['perplexity'] / base['perplexity']:.3f}) | "
            + " | ".join(scores) + f" | {row['size_bytes'] / 1e6:.1f} "
            f"(×{base['size_bytes'] / row['size_bytes']:.1f}) | {speed['prefill_speedup']:.2f} | "
            f"{'–' if decode is None else f'{decode:.2f}'} | {row['peak_memory_mb']:.0f} | {row['export_seconds']:.0f} "
            f"({phases.get('to_edge_transform_and_lower', 0):.0f}) | "
            f"{', '.join(f'{x:.1f}' for x in speed['load_average'])} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        print(render(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", default="executorch fp32;executorch 8da4w g32 + int8 embedding",
                        help="row labels separated by ';' (" + "; ".join(ROWS) + "), or 'all'")
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--task-samples", type=int, default=100)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--keep", default=None, help="folder to keep the exports in (default: a temporary one)")
    parser.add_argument("--artifact", action="append", default=[], metavar="LABEL=DIR",
                        help="a slimkit artifact exported with " + json.dumps(ARTIFACT_ROW) + " (row '<LABEL> → "
                             "executorch 8da4w (c)': codes carried where XNNPACK holds them, the rest re-quantized)")
    parser.add_argument("--tasks", default="sentiment", help="tasks separated by ',' (the first is the headline)")
    args = parser.parse_args()
    if Path(args.out).exists():
        parser.error(f"{args.out} exists; results files are never overwritten: choose a new name")

    import executorch.runtime  # noqa: F401  (fail early when the runtime is missing)
    from slimkit_executorch import ExecuTorchConfig, ExecuTorchExporter

    from slimkit.data import build_splits
    from slimkit.deploy.evaluate import quality
    from slimkit.deploy.serving import TorchSession, serving_speed
    from slimkit.models import load_model

    torch.set_num_threads(1)
    started = time.time()
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    data = build_splits(tokenizer, eval_tokens=args.eval_tokens)
    prompt = data.eval[:1, :args.prompt_tokens]
    eval_cfg = {"threads": 1, "latency_processes": args.processes, "repeats": args.repeats,
                "decode_tokens": args.decode_tokens}
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.task_samples else []

    # the fp32 baseline through the same quality() code as the exports, on PyTorch's logits
    measured = quality(TorchSession(model), data.eval, tokenizer, tasks, args.task_samples, {}, label="fp32")
    baseline = {"perplexity": measured["perplexity"],
                "tasks": {name: {r["metric"]: r["final"]} for name, r in measured["tasks"].items()}}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        baseline["size_bytes"] = sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors"))
    baseline["peak_memory_mb"] = peak_memory_mb([args.model, json.dumps(prompt[0].tolist()), str(args.decode_tokens)],
                                                TORCH_PEAK)
    print(json.dumps({"baseline": baseline}), flush=True)

    chosen = list(ROWS) if args.rows == "all" else [r.strip() for r in args.rows.split(";") if r.strip()]
    sources = {}  # row label -> (the artifact it exports, its folder)
    for spec in args.artifact:
        name, _, artifact_dir = spec.partition("=")
        if not artifact_dir or not Path(artifact_dir).is_dir():
            parser.error(f"--artifact {spec!r}: expected LABEL=DIR with an existing artifact folder")
        import slimkit

        label = f"{name} → executorch 8da4w (c)"
        ROWS[label] = ARTIFACT_ROW
        sources[label] = (slimkit.load(artifact_dir), artifact_dir)
        chosen.append(label)
    keep = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="deploy-executorch-"))
    results = []
    for label in chosen:
        folder = keep / label.replace(" ", "_").replace("+", "")
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        print(f"== {label}", flush=True)
        exporter = ExecuTorchExporter(ExecuTorchConfig(max_seq_len=args.max_seq_len, **ROWS[label]))
        source, source_dir = sources.get(label, (model, loaded.path))
        exporter.check_model(source.config, None)
        start = time.perf_counter()
        facts = exporter.export(Path(source_dir), source, tokenizer, folder)
        export_s = time.perf_counter() - start
        session = ExecuTorchExporter.open(folder, threads=1)
        row = {"row": label, "config": ROWS[label], "artifact": str(source_dir) if label in sources else None,
               "runtime_version": session.runtime_version, "facts": facts,
               "export_seconds": round(export_s, 1), "load_average_after_export": list(os.getloadavg()),
               "size_bytes": (folder / "model.pte").stat().st_size}
        row.update(quality(session, data.eval, tokenizer, tasks, args.task_samples, baseline, label=label))
        del session
        row["speed"] = serving_speed("executorch", folder, {"name": args.model}, 0, prompt, eval_cfg)
        row["peak_memory_mb"] = peak_memory_mb([str(folder), json.dumps(prompt[0].tolist()), str(args.decode_tokens)],
                                               EXPORT_PEAK)
        results.append(row)
        print(json.dumps({k: row[k] for k in ("row", "perplexity", "tasks", "size_bytes", "peak_memory_mb",
                                               "export_seconds")}), flush=True)
        print(f"   prefill x{row['speed']['prefill_speedup']:.2f} decode x{row['speed']['decode_speedup']}", flush=True)
        write(args.out, loaded, data, args, eval_cfg, baseline, results, started, final=False)
    write(args.out, loaded, data, args, eval_cfg, baseline, results, started, final=True)
    print(f"wrote {args.out}")


def write(out, loaded, data, args, eval_cfg, baseline, results, started, final: bool) -> None:
    """The report so far: ``<out>.partial.json`` after each row, ``<out>`` once every row ran."""
    from importlib.metadata import version

    report = {
        "command": "python " + " ".join(sys.argv),
        "model": {"name": args.model, "provenance": loaded.provenance},
        "data": data.info, "eval_tokens": args.eval_tokens, "task_samples": args.task_samples,
        "timing": {**eval_cfg, "prompt_tokens": args.prompt_tokens, "threads_torch": torch.get_num_threads(),
                   "condition": "serving: fresh processes that load only PyTorch fp32 and the export"},
        "max_seq_len": args.max_seq_len,
        "baseline_fp32_pytorch": baseline,
        "rows": results,
        "versions": {"torch": torch.__version__, "executorch": version("executorch"), "torchao": version("torchao"),
                     "transformers": version("transformers"), "python": platform.python_version()},
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_average_end": list(os.getloadavg()), "wall_seconds": round(time.time() - started),
        "note": "the machine (2 cores) is shared by several agents: load averages are recorded per row; ratios are noisy",
        "complete": final,
    }
    target = Path(out) if final else Path(out).with_suffix(".partial.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=1, default=str))
    if final:
        Path(out).with_suffix(".partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
