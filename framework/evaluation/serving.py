"""Latency the way a deployed artifact runs: in fresh processes that each load one model and time it.

A round starts one worker process for the baseline (a float Hugging Face folder) and one for the artifact
(``slimkit.load``), one after the other (the order alternates between rounds, so drift in machine load hits
both alike); each worker loads only its model, as a server process does, and holds nothing else. Each
worker also returns its greedy next-token choices on the prompt; the round records the top-1 agreement of
the artifact with the baseline, so a broken artifact cannot post a fast time. The parent hands over the
prompt as token ids, so no worker runs a tokenizer. Ratios are taken per round; the report gives their
median, min and max over the rounds.

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
CONDITIONS = {"serving": "fresh processes that each load one model (the baseline or the artifact), alternated",
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
    model = load_pretrained(request["path"]) if request["role"] == "baseline" else load(request["path"])
    with torch.no_grad():
        top1 = model(input_ids=prompt).logits.argmax(-1)[0].tolist()
    timed = latency({request["role"]: model}, prompt, threads=threads, repeats=request["repeats"],
                    decode_tokens=request["decode_tokens"], progress=False)
    return {"timing": timed[request["role"]], "top1": top1, "pid": os.getpid()}


def _run_worker(request: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "slimkit.evaluation.serving"], input=json.dumps(request),
                          capture_output=True, text=True, env=dict(env))
    if done.returncode != 0:
        raise TimingError(f"a timing process ({request['role']}) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def serving_latency(baseline_dir: str | os.PathLike, artifact_dir: str | os.PathLike, prompt: Sequence[int], *,
                    processes: int = 3, threads: int = 1, repeats: int = 5, decode_tokens: int = 32) -> dict[str, Any]:
    """Time ``artifact_dir`` against ``baseline_dir`` over ``processes`` rounds, each a fresh process per model.

    Returns per-round results (``runs``: timing of both, their pids, top-1 agreement) and, for
    ``baseline``/``final``, the medians over rounds of ``prefill_ms`` and ``decode_tokens_per_s``, plus
    ``prefill_speedup``/``decode_speedup`` summaries (median, min, max of the per-round ratios).
    """
    if processes < 1:
        raise ValueError(f"processes={processes} must be at least 1")
    common = {"prompt": list(map(int, prompt)), "threads": threads, "repeats": repeats, "decode_tokens": decode_tokens}
    paths = {"baseline": str(baseline_dir), "final": str(artifact_dir)}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    runs = []
    for index in tqdm(range(processes), desc=f"latency in fresh processes ({threads} thread{'s' if threads != 1 else ''})",
                      leave=False):
        order = ("baseline", "final") if index % 2 == 0 else ("final", "baseline")
        done = {role: _run_worker({**common, "role": role, "path": paths[role]}, env) for role in order}
        t = {role: done[role]["timing"] for role in paths}
        pairs = list(zip(done["baseline"]["top1"], done["final"]["top1"]))
        runs.append({"timing": t, "pids": {role: done[role]["pid"] for role in paths}, "order": list(order),
                     "top1_agreement": sum(a == b for a, b in pairs) / len(pairs),
                     "prefill_speedup": t["baseline"]["prefill_ms"] / t["final"]["prefill_ms"],
                     "decode_speedup": t["final"]["decode_tokens_per_s"] / t["baseline"]["decode_tokens_per_s"]})

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
    result = _worker(json.loads(sys.stdin.read()))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":  # pragma: no cover - exercised through serving_latency in subprocesses
    main()
