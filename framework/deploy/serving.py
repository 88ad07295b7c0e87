"""Speed of an export against PyTorch fp32, timed the way a serving process runs: in fresh processes.

Each child process (``python -m slimkit.deploy.serving SPEC.json``) loads the original fp32 model
and opens the export in its runtime, loads nothing else (no corpus, no tokenizer run), and times the
two alternately, round by round, through the same two calls on both sides:

- prefill: ``logits(prompt)``, the whole prompt without a cache (what the PyTorch stages time too);
- decode: greedy tokens with the KV cache, ``(n - 1) / (t(generate(prompt, n)) - t(generate(prompt, 1)))``,
  so the prompt's processing cancels out.

Medians per process; the parent runs ``eval.latency_processes`` children (one under
``eval.latency_condition=in_process``) one after another and reports each
process's ratios and their median. Threads are pinned in both (torch and the runtime).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from slimkit.core.errors import SlimkitError


class TorchSession:
    """PyTorch eager as a :class:`~slimkit.core.plugin.RuntimeSession`: the fp32 side of the timing."""

    runtime = "pytorch"

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self.runtime_version = torch.__version__

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(input_ids=input_ids, use_cache=False).logits.float()

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
        tokens: list[int] = []
        with torch.no_grad():
            out = self.model(input_ids=input_ids, use_cache=True)
            for i in range(new_tokens):
                token = out.logits[:, -1:].argmax(-1)
                tokens.append(int(token))
                if i + 1 < new_tokens:
                    out = self.model(input_ids=token, cache=out.cache, use_cache=True)
        return tokens


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def time_sessions(sessions: Mapping[str, Any], prompt: torch.Tensor, repeats: int, decode_tokens: int) -> dict[str, dict[str, float]]:
    """Median prefill ms and decode tokens/s of each session, alternated round by round."""
    if decode_tokens < 2:
        raise SlimkitError(f"eval.decode_tokens={decode_tokens}: timing decode needs at least 2 tokens")
    samples: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "first": [], "all": []} for k in sessions}
    for session in sessions.values():  # warm-up: allocators, kernels, lazy init
        session.logits(prompt)
        session.generate(prompt, 2)
    for _ in range(repeats):
        for name, session in sessions.items():
            samples[name]["prefill"].append(_timed(session.logits, prompt))
            samples[name]["first"].append(_timed(session.generate, prompt, 1))
            samples[name]["all"].append(_timed(session.generate, prompt, decode_tokens))
    out = {}
    for name, s in samples.items():
        decode_s = statistics.median(s["all"]) - statistics.median(s["first"])
        # None when the decode steps vanish in the timing noise (a tiny model in a fast runtime)
        out[name] = {"prefill_ms": statistics.median(s["prefill"]) * 1000,
                     "decode_tokens_per_s": (decode_tokens - 1) / decode_s if decode_s > 0 else None}
    return out


def time_exports(spec: Mapping[str, Any]) -> dict[str, Any]:
    """In this process: fp32 and every export of ``spec["exports"]`` (name → folder an exporter wrote) opened,
    each export's top-1 agreement with fp32 on the prompt, all timed alternately; ratios per export name."""
    from slimkit.core.plugin import Kind
    from slimkit.core.registry import default_registry
    from slimkit.models import load_model

    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    model = spec["model"]
    sessions = {"fp32": TorchSession(load_model(model.get("name", "smollm2-135m"), model.get("path"),
                                                bool(model.get("trust_remote_code", False)),
                                                int(spec.get("seed", 0))).model)}
    cls = default_registry().get(Kind.EXPORTER, spec["exporter"])
    for name, folder in spec["exports"].items():
        sessions[name] = cls.open(Path(folder), threads=threads)
    prompt = torch.tensor([spec["prompt"]], dtype=torch.long)
    reference = sessions["fp32"].logits(prompt).argmax(-1)
    exports = [name for name in sessions if name != "fp32"]
    agreement = {name: (sessions[name].logits(prompt).argmax(-1) == reference).float().mean().item()
                 for name in exports}
    timing = time_sessions(sessions, prompt, int(spec["repeats"]), int(spec["decode_tokens"]))
    base = timing["fp32"]

    def decode_ratio(name: str) -> float | None:
        tps = timing[name]["decode_tokens_per_s"]
        return tps / base["decode_tokens_per_s"] if tps and base["decode_tokens_per_s"] else None

    return {"pid": os.getpid(), "timing": timing, "top1_agreement_with_fp32": agreement,
            "prefill_speedup": {name: base["prefill_ms"] / timing[name]["prefill_ms"] for name in exports},
            "decode_speedup": {name: decode_ratio(name) for name in exports}}


def child(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One serving process: load fp32 and the export (``spec["export_dir"]``), agree on the prompt, time both
    alternately."""
    result = time_exports({**spec, "exports": {"export": spec["export_dir"]}})
    return {"timing": result["timing"], "pid": result["pid"],
            **{key: result[key]["export"] for key in ("top1_agreement_with_fp32", "prefill_speedup", "decode_speedup")}}


def timing_processes(spec: Mapping[str, Any], processes: int, desc: str, what: str,
                     after_each: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Run ``processes`` fresh ``python -m slimkit.deploy.serving SPEC`` children one after another, threads pinned
    to ``spec["threads"]``; each child's result (:func:`time_exports` when ``spec`` has ``exports``, else
    :func:`child`). ``after_each`` is called when a child has finished (e.g. to note the load average)."""
    from tqdm.auto import tqdm

    threads = str(spec["threads"])
    env = {**os.environ, **{k: threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    runs = []
    with tempfile.TemporaryDirectory(prefix="slimkit-serving-") as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        for _ in tqdm(range(processes), desc=desc, leave=False):
            done = subprocess.run([sys.executable, "-m", "slimkit.deploy.serving", str(spec_file)],
                                  capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SlimkitError(f"a {what} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            if after_each is not None:
                after_each()
    return runs


def serving_speed(exporter: str, export_dir: Path, model: Mapping[str, Any], seed: int, prompt: torch.Tensor,
                  eval_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Run the fresh timing processes one after another; per-process results and medians."""
    threads = int(eval_cfg.get("threads", 1))
    # exports are always timed in fresh processes: eval.latency_processes of them in the serving condition
    # (the default), one when the run times its artifact in process (eval=fast)
    serving = eval_cfg.get("latency_condition", "serving") == "serving"
    processes = int(eval_cfg.get("latency_processes", 3)) if serving else 1
    if processes < 1:
        raise SlimkitError(f"eval.latency_processes={processes}: at least one timing process is needed")
    spec = {"exporter": exporter, "export_dir": str(export_dir), "model": dict(model), "seed": seed,
            "prompt": prompt[0].tolist(), "threads": threads, "repeats": int(eval_cfg.get("repeats", 5)),
            "decode_tokens": int(eval_cfg.get("decode_tokens", 32))}
    runs = timing_processes(spec, processes, f"serving speed [{exporter}]",
                            f"serving-speed process for the {exporter} export")
    decode = [r["decode_speedup"] for r in runs if r["decode_speedup"] is not None]
    return {"prefill_speedup": statistics.median(r["prefill_speedup"] for r in runs),
            "decode_speedup": statistics.median(decode) if decode else None,
            "processes": runs, "threads": threads, "load_average": list(os.getloadavg())}


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    result = time_exports(spec) if "exports" in spec else child(spec)
    print(json.dumps(result))
