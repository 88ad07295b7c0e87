"""GGUF on llama.cpp: the runtime's own route from the fp32 model against slimkit's export of the same weights.

For SmolLM2-135M and each of Q8_0 and Q4_0:

- (a) **llama.cpp's route**: slimkit writes an F16 GGUF of the fp32 model (``exporter.gguf.weights=f16``;
  the role of llama.cpp's ``convert_hf_to_gguf.py``), then llama.cpp's own quantizer
  (``llama_cpp.llama_model_quantize``, default mixture, 1 thread) turns it into Q8_0 / Q4_0;
- (b) **slimkit's export**: the gguf exporter writes Q8_0 / Q4_0 straight from the fp32 weights.

Every file is measured inside llama.cpp (llama-cpp-python) with slimkit's deployment code
(``slimkit.deploy``): perplexity on the held-out slice (the last 16 windows of 256 Wikipedia
tokens), 2-shot sentiment accuracy on 200 balanced sentences, size on disk, and prefill / decode speed
against PyTorch fp32 in fresh processes that load only the two models (1 thread, alternated, medians;
``--processes`` processes per file). PyTorch fp32 is measured the same way (its own quality row).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/deploy.py --out benchmarks/deploy_<new name>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


#: block formats slimkit's gguf exporter writes itself (route (b)); other formats are measured by route (a) only
SLIMKIT_WRITES = {"q8_0", "q5_1", "q5_0", "q4_1", "q4_0"}


def quantize_with_llama_cpp(source: Path, target: Path, ftype: str) -> None:
    """llama.cpp's own quantizer, its default tensor-type mixture for ``ftype`` (as `llama-quantize source target
    Q4_0`; any ``LLAMA_FTYPE_MOSTLY_*`` name, e.g. q3_k_m, q2_k). Tensors a type cannot hold (k-quants need rows of
    multiples of 256) get llama.cpp's own fallback type: the file's ``tensor_types`` say which."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 1
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}")
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed with {rc}")


def tensor_types(path: Path) -> dict[str, int]:
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts


def markdown(results: dict) -> str:
    """The table benchmarks/deploy.md shows, from a results JSON."""
    lines = ["| file | route | ppl (×fp32) | sentiment (retained) | MB (×smaller) | prefill × fp32 | decode × fp32 | per process (prefill / decode) |",
             "|---|---|---|---|---|---|---|---|"]
    fp32_sentiment = results["rows"][0]["tasks"]["sentiment"]["final"]  # the reference row comes first
    for r in results["rows"]:
        sent = dict(r["tasks"]["sentiment"])
        if sent.get("retained") is None:  # files written before the baseline was handed over in quality()'s form
            sent["retained"] = sent["final"] / fp32_sentiment
        procs = " · ".join(f"{p['prefill_speedup']:.2f}/{p['decode_speedup']:.2f}" for p in r.get("processes") or [])
        speed = (f"{r['prefill_speedup']:.2f}×", f"{r['decode_speedup']:.2f}×") if r.get("processes") else ("–", "–")
        lines.append(f"| {r['label']} | {r['route']} | {r['perplexity']:.2f} (×{r['perplexity_ratio']:.3f}) | "
                     f"{sent['final']:.3f} ({sent['retained']:.1%}) | {r['size_bytes'] / 1e6:.1f} ({r['size_ratio']:.1f}×) | "
                     f"{speed[0]} | {speed[1]} | {procs or '–'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", help="print the markdown table of a results JSON and exit")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--formats", default="q8_0,q4_0",
                   help="llama.cpp file types (LLAMA_FTYPE_MOSTLY_<NAME>), comma-separated; route (b) only for "
                        + ", ".join(sorted(SLIMKIT_WRITES)))
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--task-samples", type=int, default=200)
    p.add_argument("--with-f16", action="store_true", help="also measure the F16 file (a row of its own)")
    p.add_argument("--out", help="a new results JSON (an existing file is refused)")
    args = p.parse_args()
    if not args.table and (not args.out or Path(args.out).exists()):
        p.error(f"--out {args.out} exists; results files are never overwritten: choose another name" if args.out
                else "--out is required (a new results JSON)")
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return

    import llama_cpp  # (fail early: this benchmark is about llama.cpp)

    unknown = [f for f in args.formats.split(",") if not hasattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{f.upper()}")]
    if unknown:
        p.error(f"--formats: {unknown} are not llama.cpp file types; known: "
                + ", ".join(sorted(n[len("LLAMA_FTYPE_MOSTLY_"):].lower() for n in dir(llama_cpp)
                                   if n.startswith("LLAMA_FTYPE_MOSTLY_"))))

    from slimkit.core.artifact import directory_size
    from slimkit.data import build_splits
    from slimkit.deploy.evaluate import quality
    from slimkit.deploy.serving import TorchSession, serving_speed
    from slimkit.models import load_model
    from slimkit_gguf import FILE_NAME, GGUFConfig, GGUFExporter

    torch.set_num_threads(1)
    loaded = load_model(args.model)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    data = build_splits(tokenizer, seq_len=256, train_tokens=256, calibration_samples=1, eval_tokens=16 * 256)
    eval_cfg = {"threads": 1, "latency_processes": args.processes, "repeats": args.repeats, "decode_tokens": 32}
    prompt = data.eval[:1, :128]
    model_settings = {"name": args.model}
    started = time.time()
    rows = []

    def measure(label: str, route: str, folder: Path | None, baseline: dict) -> dict:
        t0 = time.time()
        if folder is None:  # PyTorch fp32 itself
            session = TorchSession(model)
            entry = quality(session, data.eval, tokenizer, ["sentiment"], args.task_samples, baseline, label=label)
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                entry["size_bytes"] = directory_size(tmp)
            entry["runtime"], entry["runtime_version"] = "pytorch", torch.__version__
        else:
            session = GGUFExporter.open(folder, threads=1)
            entry = quality(session, data.eval, tokenizer, ["sentiment"], args.task_samples, baseline, label=label)
            entry["size_bytes"] = (folder / FILE_NAME).stat().st_size
            entry["tensor_types"] = tensor_types(folder / FILE_NAME)
            entry["runtime"], entry["runtime_version"] = session.runtime, session.runtime_version
            del session
            entry.update(serving_speed("gguf", folder, model_settings, 0, prompt, eval_cfg))
        entry.update(label=label, route=route, seconds=round(time.time() - t0, 1))
        print(json.dumps({k: v for k, v in entry.items() if k != "processes"}), flush=True)
        return entry

    reference = measure("PyTorch fp32", "reference", None, {})
    fp32_sentiment = reference["tasks"]["sentiment"]["final"]
    reference["tasks"]["sentiment"]["retained"] = 1.0
    baseline = {"tasks": {"sentiment": {"acc": fp32_sentiment}}, "perplexity": reference["perplexity"],
                "size_bytes": reference["size_bytes"]}
    rows.append(reference)

    with tempfile.TemporaryDirectory(prefix="deploy-bench-") as tmp:
        root = Path(tmp)

        def export(name: str, weights: str) -> Path:
            folder = root / name
            folder.mkdir()
            GGUFExporter(GGUFConfig(weights=weights)).export(root, model, tokenizer, folder)
            return folder

        f16 = export("f16", "f16")
        if args.with_f16:
            rows.append(measure("llama.cpp F16 (slimkit export)", "f16", f16, baseline))
        for fmt in args.formats.split(","):
            runtime_route = root / f"llamacpp-{fmt}"
            runtime_route.mkdir()
            quantize_with_llama_cpp(f16 / FILE_NAME, runtime_route / FILE_NAME, fmt)
            rows.append(measure(f"(a) llama.cpp quantizer {fmt.upper()} (from F16)", "a", runtime_route, baseline))
            if fmt in SLIMKIT_WRITES:
                rows.append(measure(f"(b) slimkit gguf export {fmt.upper()} (from fp32)", "b", export(f"slimkit-{fmt}", fmt),
                                    baseline))
    for row in rows:
        if row.get("perplexity") and reference.get("perplexity"):
            row["perplexity_ratio"] = row["perplexity"] / reference["perplexity"]
        row["size_ratio"] = reference["size_bytes"] / row["size_bytes"]
    out = {"model": args.model, "provenance": loaded.provenance, "eval": data.info,
           "task_samples": args.task_samples, "threads": 1, "prompt_tokens": 128, "decode_tokens": 32,
           "repeats": args.repeats, "processes": args.processes, "rows": rows,
           "load_average_end": os.getloadavg(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
           "torch": torch.__version__, "seconds": round(time.time() - started), "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
