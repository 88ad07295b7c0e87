"""Peak resident memory (RSS) of whole slimkit runs, as a multiple of the fp32 model's bytes.

Each run is a fresh ``python -m slimkit ...`` child process; its peak RSS is the kernel's high-water
mark for that process (``os.wait4`` → ``ru_maxrss``), so the numbers include Python, torch and every
library slimkit imports, exactly what a user's machine has to hold. Results: ``benchmarks/memory.md``.

    # the default job (20% magnitude + quanto int8 on SmolLM2-135M), with the code checked out in the cwd
    python benchmarks/memory.py smollm2 --label after --out benchmarks/memory_smollm2_after.json
    # prune -> quantize on a random-init ~1B Llama-shaped model in bfloat16 (folder written first)
    python benchmarks/memory.py llama1b --out benchmarks/memory_llama1b_bf16.json

Extra Hydra overrides after ``--`` go to slimkit. The machine is shared: the JSON records the load
average before and after, thread settings and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: ~1B parameters, Llama-3.2-1B-like proportions with SmolLM2's 49,152-token vocabulary (tied embeddings)
LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=20, intermediate_size=5632, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
                bos_token_id=1, eos_token_id=2, pad_token_id=2)


def write_random_llama(folder: Path, dtype: str = "bfloat16", seed: int = 0) -> dict:
    """Save a random-init Llama of :data:`LLAMA_1B`'s shape as safetensors, with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from slimkit.models import count_parameters, embedded_smollm2

    if (folder / "config.json").is_file() and (folder / "written.json").is_file():
        return json.loads((folder / "written.json").read_text())
    config = LlamaConfig(**LLAMA_1B)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(embedded_smollm2())).save_pretrained(folder)
    info = {"parameters": count_parameters(model), "dtype": dtype, "seed": seed, "shape": LLAMA_1B}
    (folder / "written.json").write_text(json.dumps(info, indent=1))
    return info


def _sampler(pid: int, samples: list, stop: threading.Event, period: float = 0.5) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        start = time.monotonic()
        while not stop.is_set():
            samples.append((round(time.monotonic() - start, 1), proc.memory_info().rss))
            stop.wait(period)
    except psutil.Error:
        pass


def measure(overrides: list[str], run_dir: Path) -> dict:
    """Run ``python -m slimkit <overrides> hydra.run.dir=<run_dir>``; return its peak RSS and timings."""
    cmd = [sys.executable, "-m", "slimkit", *overrides, f"hydra.run.dir={run_dir}"]
    load_before = os.getloadavg()
    start = time.monotonic()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        samples: list = []
        stop = threading.Event()
        thread = threading.Thread(target=_sampler, args=(proc.pid, samples, stop), daemon=True)
        thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        thread.join()
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        tail = (run_dir.parent / f"{run_dir.name}.log").read_text()[-3000:]
        raise SystemExit(f"slimkit failed ({proc.returncode}):\n{tail}")
    report = json.loads((run_dir / "report.json").read_text())
    peak = usage.ru_maxrss * 1024  # kilobytes on Linux
    return {"command": " ".join(["python", "-m", "slimkit", *overrides]), "peak_rss_bytes": peak,
            "peak_rss_bytes_in_report": (report.get("resources") or {}).get("peak_rss_bytes"),
            "rss_timeline_bytes": samples[:: max(1, len(samples) // 200)], "seconds": round(seconds, 1),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "report": report}


def source_commit() -> dict:
    import slimkit

    folder = Path(slimkit.__file__).resolve().parent
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True).stdout.strip()
    return {"slimkit_source": str(folder), "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["smollm2", "llama1b"])
    parser.add_argument("--label", default="", help="free text recorded in the JSON (e.g. before/after)")
    parser.add_argument("--out", required=True, help="JSON file to write (never overwritten)")
    parser.add_argument("--model-dir", default=None, help="llama1b: where the random model is written "
                        "(default: a temporary folder, removed afterwards)")
    parser.add_argument("overrides", nargs="*", help="extra slimkit overrides (after --)")
    args, extra = parser.parse_known_args()
    args.overrides = [*args.overrides, *(e for e in extra if e != "--")]
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; results files are never overwritten: choose a new name")
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SLIMKIT_CACHE")}
    result = {"case": args.case, "label": args.label, "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "env": env}, **source_commit()}
    with tempfile.TemporaryDirectory(prefix="slimkit-memory-") as tmp:
        tmp = Path(tmp)
        if args.case == "smollm2":
            overrides = list(args.overrides)
            run = measure(overrides, tmp / "run")
            parameters = run["report"]["model"]["parameters"]
        else:
            folder = Path(args.model_dir) if args.model_dir else tmp / "llama1b"
            written = write_random_llama(folder)
            result["model_written"] = written
            overrides = ["model=local", f"model.path={folder}", *args.overrides]
            run = measure(overrides, tmp / "run")
            parameters = written["parameters"]
    report = run.pop("report")
    fp32_bytes = parameters * 4
    result.update(run)
    result.update({"parameters": parameters, "fp32_model_bytes": fp32_bytes,
                   "peak_rss_over_fp32_model": round(run["peak_rss_bytes"] / fp32_bytes, 3),
                   "report_summary": {k: report.get(k) for k in ("baseline", "final", "ratios", "resources")},
                   "stages": [{"backend": s["backend"], "seconds": s.get("seconds")} for s in report["stages"]]})
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"{args.case} {args.label}: peak RSS {run['peak_rss_bytes'] / 1e9:.3f} GB = "
          f"{result['peak_rss_over_fp32_model']:.2f}x the fp32 model ({fp32_bytes / 1e9:.3f} GB); {run['seconds']} s")


if __name__ == "__main__":
    main()
