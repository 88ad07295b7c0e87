"""A slimkit artifact against fp32, timed the way a serving process runs it: in fresh processes.

Each child process loads the fp32 model (``slimkit.models.load_model``) and the artifact
(``slimkit.load``), does nothing else, and times both alternately (``slimkit.evaluation.latency``:
prefill of a 128-token prompt in ms, greedy decode with the KV cache in tokens/s, medians, pinned
thread count). The parent tokenizes the prompt once and passes the token ids, so no child runs the
tokenizer: on this machine, encoding the 5 MB corpus earlier in a process measurably slows the int8
forward that follows (see speed.md), and a serving process never does that.

Speed only: quality of the same artifact is measured by ``benchmarks/speed.py`` (its logits do not
depend on the process). The children also check that the artifact agrees with fp32 on the prompt
(top-1 next-token agreement), so a broken artifact cannot post a fast time.

    slimkit '~pruner' quantizer=int8 eval=fast hydra.run.dir=/tmp/int8-smollm2       # the artifact
    OMP_NUM_THREADS=1 python benchmarks/speed_deploy.py --artifact /tmp/int8-smollm2/model \\
        --processes 6 --out benchmarks/speed_deploy_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def child(args: argparse.Namespace) -> None:
    import torch

    import slimkit
    from slimkit.evaluation import latency
    from slimkit.models import load_model

    torch.set_num_threads(args.threads)
    prompt = torch.tensor([json.loads(Path(args.prompt_file).read_text())], dtype=torch.long)
    fp32 = load_model(args.model).model.eval()
    candidate = slimkit.load(args.artifact)
    with torch.no_grad():
        agree = (fp32(input_ids=prompt).logits.argmax(-1) == candidate(input_ids=prompt).logits.argmax(-1))
    timing = latency({"fp32": fp32, "artifact": candidate}, prompt, threads=args.threads, repeats=args.repeats,
                     decode_tokens=args.decode_tokens)
    print(json.dumps({"timing": timing, "top1_agreement": float(agree.float().mean()), "pid": os.getpid()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", required=True, help="a slimkit artifact folder (the `model/` of a run)")
    p.add_argument("--processes", type=int, default=6)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads for every measurement")
    p.add_argument("--out", default="benchmarks/speed_deploy.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--prompt-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.processes < 1:
        p.error(f"--processes={args.processes} must be at least 1")

    from tqdm import tqdm

    from slimkit.core.artifact import read_manifest
    from slimkit.data import build_splits
    from slimkit.models import load_model

    manifest = read_manifest(args.artifact)
    model_name = manifest["model"]["name"]
    loaded = load_model(model_name)
    # the prompt speed.py times: the first tokens of its held-out slice (16 windows of 256)
    ids = build_splits(loaded.tokenizer, seq_len=256, train_tokens=256, calibration_samples=1,
                       eval_tokens=16 * 256).eval[0, : args.prompt].tolist()
    runs = []
    with tempfile.TemporaryDirectory(prefix="speed-deploy-") as tmp:
        prompt_file = Path(tmp) / "prompt.json"
        prompt_file.write_text(json.dumps(ids))
        command = [sys.executable, __file__, "--child", "--artifact", str(args.artifact), "--model", model_name,
                   "--prompt-file", str(prompt_file), "--threads", str(args.threads), "--repeats", str(args.repeats),
                   "--decode-tokens", str(args.decode_tokens)]
        for _ in tqdm(range(args.processes), desc="fresh processes"):
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if done.returncode != 0:
                raise SystemExit(f"a timing process failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            t = run["timing"]
            run["prefill_speedup"] = t["fp32"]["prefill_ms"] / t["artifact"]["prefill_ms"]
            run["decode_speedup"] = t["artifact"]["decode_tokens_per_s"] / t["fp32"]["decode_tokens_per_s"]
            runs.append(run)
            print(f"process {len(runs)}: prefill {run['prefill_speedup']:.2f}x, decode {run['decode_speedup']:.2f}x, "
                  f"top-1 agreement {run['top1_agreement']:.3f}", flush=True)
    summary = {key: {"median": statistics.median(r[key] for r in runs), "min": min(r[key] for r in runs),
                     "max": max(r[key] for r in runs)} for key in ("prefill_speedup", "decode_speedup")}
    out = {"artifact": str(args.artifact), "writer": manifest.get("writer"), "model": model_name,
           "weights_mb": sum(f.stat().st_size for f in Path(args.artifact).glob("*.safetensors")) / 1e6, "threads": args.threads, "prompt_tokens": args.prompt,
           "decode_tokens": args.decode_tokens, "repeats": args.repeats, "processes": runs, "summary": summary,
           "load_average_end": os.getloadavg(), "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
