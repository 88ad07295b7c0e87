"""Latency the way a deployed artifact runs: in fresh processes that load only what they time.

Each worker process loads the baseline (a float Hugging Face folder) and the artifact
(``slimkit.load``), does nothing else, checks that the artifact agrees with the baseline on the
prompt (top-1 next-token agreement, recorded, so a broken artifact cannot post a fast time), and
times both alternately with :func:`slimkit.evaluation.latency.latency`. The parent hands over the
prompt as token ids, so no worker runs a tokenizer. Ratios are taken per process; the report gives
their median, min and max over the processes.

    python -m slimkit.evaluation.serving < request.json     # one worker (what serving_latency runs)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any, Mapping, Sequence

from tqdm.auto import tqdm

from slimkit.core.errors import SlimkitError

#: what ``report.json``'s ``timing.condition`` says for each way of timing
CONDITIONS = {"serving": "fresh processes that load only the baseline and the artifact, alternated",
              "in_process": "the run's own process (after loading data and evaluating), alternated"}


class TimingError(SlimkitError):
    """A timing worker process failed."""


def _worker(request: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    from slimkit.core.artifact import load_pretrained
    from slimkit.core.loader import load
    from slimkit.evaluation.latency import latency

    threads = int(request["threads"])
    torch.set_num_threads(threads)
    prompt = torch.tensor([request["prompt"]], dtype=torch.long)
    baseline = load_pretrained(request["baseline"])
    artifact = load(request["artifact"])
    with torch.no_grad():
        agree = baseline(input_ids=prompt).logits.argmax(-1) == artifact(input_ids=prompt).logits.argmax(-1)
    timed = latency({"baseline": baseline, "final": artifact}, prompt, threads=threads, repeats=request["repeats"],
                    decode_tokens=request["decode_tokens"], progress=False)
    return {"timing": timed, "top1_agreement": float(agree.float().mean()), "pid": os.getpid()}


def serving_latency(baseline_dir: str | os.PathLike, artifact_dir: str | os.PathLike, prompt: Sequence[int], *,
                    processes: int = 3, threads: int = 1, repeats: int = 5, decode_tokens: int = 32) -> dict[str, Any]:
    """Time ``artifact_dir`` against ``baseline_dir`` in ``processes`` fresh worker processes.

    Returns per-process results and, for ``baseline``/``final``, the medians over processes of
    ``prefill_ms`` and ``decode_tokens_per_s``, plus ``prefill_speedup``/``decode_speedup`` summaries
    (median, min, max of the per-process ratios).
    """
    if processes < 1:
        raise ValueError(f"processes={processes} must be at least 1")
    request = json.dumps({"baseline": str(baseline_dir), "artifact": str(artifact_dir), "prompt": list(map(int, prompt)),
                          "threads": threads, "repeats": repeats, "decode_tokens": decode_tokens})
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    runs = []
    for _ in tqdm(range(processes), desc=f"latency in fresh processes ({threads} thread{'s' if threads != 1 else ''})",
                  leave=False):
        done = subprocess.run([sys.executable, "-m", "slimkit.evaluation.serving"], input=request, capture_output=True,
                              text=True, env=env)
        if done.returncode != 0:
            raise TimingError(f"a timing process failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        run = json.loads(done.stdout.strip().splitlines()[-1])
        t = run["timing"]
        run["prefill_speedup"] = t["baseline"]["prefill_ms"] / t["final"]["prefill_ms"]
        run["decode_speedup"] = t["final"]["decode_tokens_per_s"] / t["baseline"]["decode_tokens_per_s"]
        runs.append(run)

    def median(model: str, key: str) -> float:
        return statistics.median(r["timing"][model][key] for r in runs)

    def spread(key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "baseline": {"prefill_ms": median("baseline", "prefill_ms"),
                     "decode_tokens_per_s": median("baseline", "decode_tokens_per_s"), "threads": threads},
        "final": {"prefill_ms": median("final", "prefill_ms"),
                  "decode_tokens_per_s": median("final", "decode_tokens_per_s"), "threads": threads},
        "prefill_speedup": spread("prefill_speedup"),
        "decode_speedup": spread("decode_speedup"),
        "top1_agreement": min(r["top1_agreement"] for r in runs),
        "runs": runs,
    }


def main() -> None:
    from slimkit.core.memory import large_frees_to_os

    large_frees_to_os()  # a loader's freed buffers go back to the OS before the timing (SmolLM2 + quanto: 1.88 -> 1.47 GB)
    result = _worker(json.loads(sys.stdin.read()))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":  # pragma: no cover - exercised through serving_latency in subprocesses
    main()
