"""A slimkit artifact against fp32, timed the way a serving process runs it: in fresh processes.

This is the pipeline's own serving-condition timing (``slimkit.evaluation.serving.serving_latency``, what
``report.json``'s ``timing`` records) run on its own, for more processes. Each child process loads the fp32
model folder and the artifact (``slimkit.load``), does nothing else, checks top-1 next-token agreement with
fp32 on the prompt (so a broken artifact cannot post a fast time), and times both alternately (prefill of
a 128-token prompt in ms, greedy decode with the KV cache in tokens/s, medians, pinned thread count). The
parent tokenizes the prompt once and passes the token ids, so no child runs the tokenizer.

    slimkit '~pruner' quantizer=int8 eval=fast hydra.run.dir=/tmp/int8-smollm2       # the artifact
    OMP_NUM_THREADS=1 python benchmarks/speed_deploy.py --artifact /tmp/int8-smollm2/model \\
        --processes 6 --out benchmarks/speed_deploy_smollm2_<date>.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", required=True, help="a slimkit artifact folder (the `model/` of a run)")
    p.add_argument("--processes", type=int, default=6)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads for every measurement")
    p.add_argument("--out", required=True, help="a new JSON file (never overwrite one a document cites)")
    args = p.parse_args()
    if args.processes < 1:
        p.error(f"--processes={args.processes} must be at least 1")

    from slimkit.core.artifact import read_manifest
    from slimkit.data import build_splits
    from slimkit.evaluation.serving import serving_latency
    from slimkit.models import load_model

    manifest = read_manifest(args.artifact)
    model_name = manifest["model"]["name"]
    loaded = load_model(model_name)
    # the prompt speed.py times: the first tokens of its held-out slice (16 windows of 256)
    ids = build_splits(loaded.tokenizer, seq_len=256, train_tokens=256, calibration_samples=1,
                       eval_tokens=16 * 256).eval[0, : args.prompt].tolist()
    folder = Path(loaded.path)
    del loaded
    served = serving_latency(folder, args.artifact, ids, processes=args.processes, threads=args.threads,
                             repeats=args.repeats, decode_tokens=args.decode_tokens)
    out = {"artifact": str(args.artifact), "writer": manifest.get("writer"), "model": model_name,
           "weights_mb": sum(f.stat().st_size for f in Path(args.artifact).glob("*.safetensors")) / 1e6,
           "threads": args.threads, "prompt_tokens": args.prompt, "decode_tokens": args.decode_tokens,
           "repeats": args.repeats, "processes": served["runs"],
           "summary": {k: served[k] for k in ("prefill_speedup", "decode_speedup")},
           "top1_agreement": served["top1_agreement"], "load_average_end": os.getloadavg(), "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["summary"], indent=2))


if __name__ == "__main__":
    main()
