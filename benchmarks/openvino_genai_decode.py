"""Decode speed of an ``openvino`` export served three ways, against PyTorch fp32, in fresh processes.

    OMP_NUM_THREADS=1 python benchmarks/openvino_genai_decode.py --weights int8 --inference-precision bf16 \
        --out benchmarks/openvino_genai_decode_smollm2.json --processes 3

The export is written first by the ``openvino`` exporter (``--weights``, ``--inference-precision``, ``--symmetric``,
``--group-size``; with openvino-tokenizers installed it also writes the tokenizer as OpenVINO models).

Each fresh process loads only what it times — PyTorch fp32 (``slimkit.deploy.serving.TorchSession``), the
export in slimkit's ``OpenVinoSession`` and in openvino-genai's ``LLMPipeline`` (stateful SDPA backend, same
thread and precision settings) — and times them alternately, round by round, at 1 thread on the same
prompt (``--prompt-tokens`` of held-out text): greedy generation of 1 and of ``--decode-tokens`` tokens,
decode = (n − 1) / (t(n) − t(1)) with medians, as ``slimkit.deploy.serving`` does; "first token" = t(1)
(prefill + one step; LLMPipeline gives no logits, so it has no prefill-only time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


class GenAISession:
    """openvino-genai's LLMPipeline on the export folder, greedy, fed token ids (no text round trip)."""

    def __init__(self, folder: Path, threads: int):
        import openvino_genai

        settings = json.loads((folder / "slimkit_export.json").read_text())
        precision = settings.get("inference_precision", "f32")
        self.pipe = openvino_genai.LLMPipeline(
            str(folder), "CPU", ATTENTION_BACKEND="SDPA", INFERENCE_NUM_THREADS=threads, NUM_STREAMS=1,
            PERFORMANCE_HINT="LATENCY", INFERENCE_PRECISION_HINT=precision,
            KV_CACHE_PRECISION=settings.get("kv_cache_precision") or precision)
        self.config = openvino_genai.GenerationConfig()
        self.config.do_sample, self.config.ignore_eos = False, True
        self.genai = openvino_genai

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
        import openvino

        self.config.max_new_tokens = int(new_tokens)
        ids = input_ids.reshape(1, -1).to(torch.int64).numpy()
        inputs = self.genai.TokenizedInputs(openvino.Tensor(ids), openvino.Tensor(ids * 0 + 1))
        return list(self.pipe.generate(inputs, self.config).tokens[0])


def child(spec: dict) -> dict:
    from slimkit_openvino import OpenVinoExporter

    from slimkit.deploy.serving import TorchSession
    from slimkit.models import load_model

    torch.set_num_threads(1)
    folder = Path(spec["export"])
    sessions = {"pytorch_fp32": TorchSession(load_model(spec["model"]).model),
                "slimkit_session": OpenVinoExporter.open(folder, threads=1),
                "openvino_genai": GenAISession(folder, 1)}
    prompt = torch.tensor([spec["prompt"]])
    n = int(spec["decode_tokens"])
    tokens = {name: s.generate(prompt, n) for name, s in sessions.items()}  # warm-up, and the tokens compared
    samples = {name: {"first": [], "all": []} for name in sessions}
    for _ in range(int(spec["repeats"])):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.generate(prompt, 1)
            samples[name]["first"].append(time.perf_counter() - start)
            start = time.perf_counter()
            session.generate(prompt, n)
            samples[name]["all"].append(time.perf_counter() - start)
    out = {"pid": os.getpid(), "load_average": list(os.getloadavg()), "tokens": tokens}
    for name, s in samples.items():
        first, whole = statistics.median(s["first"]), statistics.median(s["all"])
        out[name] = {"first_token_ms": first * 1000, "decode_tokens_per_s": (n - 1) / (whole - first)}
    for name in ("slimkit_session", "openvino_genai"):
        out[name]["decode_speedup"] = out[name]["decode_tokens_per_s"] / out["pytorch_fp32"]["decode_tokens_per_s"]
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(Path(sys.argv[2]).read_text()))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="int8")
    parser.add_argument("--inference-precision", default="bf16")
    parser.add_argument("--symmetric", action="store_true")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--keep", default=None, help="folder to write the export into (default: a temporary one)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    args = parser.parse_args()
    if Path(args.out).exists():
        parser.error(f"{args.out} exists; results files are never overwritten: choose a new name")
    import tempfile

    import openvino
    import openvino_genai
    from slimkit_openvino import OpenVinoConfig, OpenVinoExporter

    from slimkit.data import build_splits
    from slimkit.models import load_model

    loaded = load_model(args.model)
    prompt = build_splits(loaded.tokenizer, eval_tokens=2048).eval[0, :args.prompt_tokens].tolist()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="openvino-genai-"))
    folder.mkdir(parents=True, exist_ok=True)
    config = OpenVinoConfig(weights=args.weights, inference_precision=args.inference_precision,
                            symmetric=args.symmetric, group_size=args.group_size)
    facts = OpenVinoExporter(config).export(Path(loaded.path), loaded.model, loaded.tokenizer, folder)
    if not facts["openvino_genai_ready"]:
        parser.error(facts["notes"])
    del loaded
    spec_file = Path(args.out).with_suffix(".spec.json")
    spec_file.write_text(json.dumps({"export": str(folder), "model": args.model, "prompt": prompt,
                                     "repeats": args.repeats, "decode_tokens": args.decode_tokens}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    runs = []
    try:
        for i in range(args.processes):
            done = subprocess.run([sys.executable, __file__, "--child", str(spec_file)], check=False,
                                  capture_output=True, text=True, env=env)
            if done.returncode:
                raise RuntimeError(done.stderr[-3000:])
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"process {i}: " + ", ".join(f"{k} decode x{runs[-1][k]['decode_speedup']:.2f}"
                                                 for k in ("slimkit_session", "openvino_genai")), flush=True)
    finally:
        spec_file.unlink(missing_ok=True)
    settings = json.loads((folder / "slimkit_export.json").read_text())
    report = {
        "command": "python " + " ".join(sys.argv), "export": str(folder), "export_facts": facts,
        "export_settings": {k: v for k, v in settings.items() if k != "kv_shapes"},
        "median": {name: {"decode_speedup": statistics.median(r[name]["decode_speedup"] for r in runs),
                          "decode_tokens_per_s": statistics.median(r[name]["decode_tokens_per_s"] for r in runs),
                          "first_token_ms": statistics.median(r[name]["first_token_ms"] for r in runs)}
                   for name in ("slimkit_session", "openvino_genai")},
        "pytorch_fp32_decode_tokens_per_s": statistics.median(r["pytorch_fp32"]["decode_tokens_per_s"] for r in runs),
        "same_tokens_as_slimkit_session": all(r["tokens"]["openvino_genai"] == r["tokens"]["slimkit_session"]
                                               for r in runs),
        "processes": runs, "threads": 1, "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens,
        "versions": {"torch": torch.__version__, "openvino": openvino.get_version(),
                     "openvino_genai": openvino_genai.__version__, "python": platform.python_version()},
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "note": "the machine is shared by several agents: load averages are recorded per process; ratios are noisy",
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report["median"], indent=1))


if __name__ == "__main__":
    main()
