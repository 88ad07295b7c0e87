"""slimkit's int4 codes carried into ONNX MatMulNBits as they are, against the builder re-quantizing the same weights,
in ONNX Runtime.

The same autoround artifact as ``benchmarks/deploy_carry.py`` (``quantizer=autoround quantizer.method=rtn``: symmetric
int4, groups of 64, float16 scales, tied embedding at int4) and three ONNX exports measured in ONNX Runtime with
slimkit's deployment code (the onnx exporter's default ``accuracy_level=4``: int8 activations in MatMulNBits):

- **carried**: ``exporter.onnx.weights=auto`` — int4 MatMulNBits in blocks of 64 holding the artifact's codes and
  scales as they are;
- **re-quantized**: the artifact's dequantized weights with the codes dropped, quantized by the builder
  (``weights=int4``, its default blocks of 32, symmetric);
- **builder int4 of fp32**: the runtime's own int4 route from the fp32 model (``weights=int4``, blocks of 32).

Plus PyTorch fp32 and the autoround model in PyTorch. Perplexity on the last ``--eval-windows`` windows of 256
held-out tokens, 2-shot sentiment on ``--task-samples`` sentences, size on disk; 1 thread; no speed timing.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/deploy_carry_onnx.py --out benchmarks/deploy_carry_smollm2_onnx.json
    python benchmarks/deploy_carry.py --table benchmarks/deploy_carry_smollm2_onnx.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

LOAD_START = os.getloadavg()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--task-samples", type=int, default=200)
    p.add_argument("--out", default="benchmarks/deploy_carry_smollm2_onnx.json")
    args = p.parse_args()

    import importlib.metadata as md

    from slimkit_autoround import AutoRoundConfig, AutoRoundQuantizer
    from slimkit_onnx import OnnxConfig, OnnxExporter

    from slimkit.core.artifact import directory_size
    from slimkit.core.state import PipelineState
    from slimkit.data import build_splits
    from slimkit.deploy.evaluate import quality
    from slimkit.deploy.holdings import INT_WEIGHTS
    from slimkit.deploy.serving import TorchSession
    from slimkit.models import load_model
    from slimkit.pipeline.runner import save_artifact

    torch.set_num_threads(1)
    started = time.time()
    loaded = load_model(args.model)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    data = build_splits(tokenizer, seq_len=256, train_tokens=256, calibration_samples=1,
                        eval_tokens=args.eval_windows * 256)
    tasks = ["sentiment"] if args.task_samples else []
    rows = []

    def measure(label: str, session, baseline: dict, **extra) -> dict:
        t0 = time.time()
        entry = quality(session, data.eval, tokenizer, tasks, args.task_samples, baseline, label=label)
        entry.update(label=label, runtime=getattr(session, "runtime", "onnxruntime"),
                     runtime_version=session.runtime_version, **extra)
        entry["seconds"] = round(time.time() - t0, 1)
        print(json.dumps(entry), flush=True)
        return entry

    with tempfile.TemporaryDirectory(prefix="deploy-carry-onnx-") as tmp:
        root = Path(tmp)
        model.save_pretrained(root / "fp32", safe_serialization=True)
        reference = measure("PyTorch fp32", TorchSession(model), {}, size_bytes=directory_size(root / "fp32"))
        baseline = {"perplexity": reference["perplexity"],
                    "tasks": {name: {t["metric"]: t["final"]} for name, t in reference["tasks"].items()}}
        for task in reference["tasks"].values():
            task["retained"] = 1.0
        rows.append(reference)

        def export(name: str, source: torch.nn.Module, **config) -> tuple[Path, dict]:
            folder = root / name
            folder.mkdir()
            facts = OnnxExporter(OnnxConfig(**config)).export(root, source, tokenizer, folder)
            return folder, facts

        own, own_facts = export("builder-fp32", model, weights="int4")
        state = PipelineState(copy.deepcopy(model), tokenizer, data, model)
        stage = AutoRoundQuantizer(AutoRoundConfig(method="rtn", bits=4, group_size=args.group_size, sym=True,
                                                   embedding="int4"))
        stage.apply(state)
        save_artifact(state, root / "artifact", overwrite=False, records=[], model_info={"name": args.model})
        del state
        quantized = stage.load(root / "artifact", {})
        rows.append(measure(f"autoround RTN int4 sym g{args.group_size}, embedding int4 (PyTorch)",
                            TorchSession(quantized), baseline, size_bytes=directory_size(root / "artifact")))
        carried, carried_facts = export("carried", quantized)  # weights=auto: the codes' grid
        stripped = copy.deepcopy(quantized)
        for module in stripped.modules():
            if hasattr(module, INT_WEIGHTS):
                delattr(module, INT_WEIGHTS)
        requant, requant_facts = export("requantized", stripped, weights="int4")
        del stripped, quantized
        for label, folder, facts in [
                ("autoround codes carried → MatMulNBits (slimkit onnx, weights=auto)", carried, carried_facts),
                ("autoround dequantized → re-quantized by the builder (int4, blocks of 32)", requant, requant_facts),
                ("fp32 → the builder's int4 (blocks of 32)", own, own_facts)]:
            session = OnnxExporter.open(folder, threads=1)
            extra = {k: facts.get(k) for k in ("format", "requantized", "carried_tensors", "requantized_tensors",
                                               "notes", "scheme")}
            rows.append(measure(label, session, baseline, size_bytes=directory_size(folder), **extra))
            del session
    for row in rows:
        row["perplexity_ratio"] = row["perplexity"] / reference["perplexity"]
    versions = {}
    for dist in ("torch", "transformers", "onnxruntime", "onnxruntime-genai", "auto-round", "compressed-tensors"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    out = {"model": args.model, "provenance": loaded.provenance, "eval": data.info, "task_samples": args.task_samples,
           "scheme": f"int4 symmetric, groups of {args.group_size}, float16 scales, round-to-nearest (autoround "
                     "method=rtn), tied embedding at int4 (round-to-nearest, same groups)",
           "threads": 1, "torch_threads": torch.get_num_threads(), "rows": rows, "versions": versions,
           "load_average_start_end": [LOAD_START, os.getloadavg()],
           "machine": "shared 2-core machine (other jobs running)", "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "seconds": round(time.time() - started), "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
