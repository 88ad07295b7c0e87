"""Time a whole `slimkit -m` sweep (wall clock of the command, launch to aggregated report) and
summarise it from the sweep's own files: per-job seconds (status.json), how many times the baseline
was evaluated (cache files), the best feasible configuration.

    OMP_NUM_THREADS=1 python benchmarks/sweep_time.py --tiny            # tiny random model
    OMP_NUM_THREADS=1 python benchmarks/sweep_time.py -- eval.repeats=2 # SmolLM2-135M (default model)

Extra Hydra overrides go after ``--``. Prints a markdown block for benchmarks/sweep.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["pruner=magnitude", "pruner.sparsity=0,0.3,0.5", "quantizer=quanto", "quantizer.bits=4,8"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="experiment=tiny instead of the default SmolLM2-135M")
    parser.add_argument("--sweep-dir", default=None, help="default: a fresh temporary folder")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    sweep = Path(args.sweep_dir or tempfile.mkdtemp(prefix="slimkit-sweep-bench-"))
    command = ["slimkit", "-m", *(["experiment=tiny"] if args.tiny else []), *GRID, *args.overrides,
               f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    run = subprocess.run([shutil.which("slimkit") or "slimkit", *command[1:]], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        sys.stderr.write(run.stderr[-4000:])
        return run.returncode
    data = json.loads((sweep / "sweep.json").read_text())
    seconds = [json.loads(p.read_text()).get("seconds") for p in sweep.glob("*/status.json")]
    seconds = [s for s in seconds if s is not None]
    caches = len(list((sweep / ".slimkit").glob("baseline-*.json")))
    counts = {}
    for job in data["jobs"]:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    print(f"command: `OMP_NUM_THREADS={env['OMP_NUM_THREADS']} {' '.join(command)}`")
    print(f"- wall clock, whole sweep: {wall:.0f} s; jobs: {counts}; per job {min(seconds):.0f}–{max(seconds):.0f} s "
          f"(sum {sum(seconds):.0f} s); baseline cache files: {caches}")
    print(f"- best feasible (quality >= {data['min_quality']}): {data['best_feasible']}")
    print(f"- sweep folder: {sweep}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
