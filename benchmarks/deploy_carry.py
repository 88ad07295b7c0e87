"""slimkit's int4 codes carried into GGUF Q4_0 as they are, against re-quantizing the same weights, in llama.cpp.

On SmolLM2-135M, one autoround artifact (``quantizer=autoround quantizer.method=rtn``: symmetric int4, groups of
64 input features, float16 scales, the tied input embedding at int4 on the same grid; no calibration data) and
three GGUF files measured inside llama.cpp (llama-cpp-python) with slimkit's deployment code:

- **carried**: the gguf exporter (``exporter.gguf.weights=auto``) writes the artifact's codes and scales as Q4_0
  blocks as they are (each group of 64 = two blocks sharing its scale);
- **re-quantized**: the same artifact's dequantized float weights with the codes dropped, quantized again to Q4_0
  by gguf-py (``weights=q4_0``, the embedding at Q4_0 / Q8_0 as in the carried file: same tensor types and size);
- **llama.cpp Q4_0 of fp32**: slimkit's F16 GGUF of the fp32 model, quantized by llama.cpp's own quantizer
  (``llama_model_quantize``, default mixture: the tied embedding at Q8_0 on this model's row width).

Plus PyTorch fp32 and the autoround model in PyTorch (the carried file should reproduce it). Perplexity on the
held-out slice (the last ``--eval-windows`` windows of 256 Wikipedia tokens), 2-shot sentiment on
``--task-samples`` balanced sentences, size on disk. 1 thread. No speed timing (the machine is shared).

    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/deploy/llama_cpp_manual nice -n 10 python benchmarks/deploy_carry.py \
        --out benchmarks/deploy_carry_smollm2.json
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/deploy/llama_cpp_manual nice -n 10 python benchmarks/deploy_carry.py \
        --embedding int8 --out benchmarks/deploy_carry_smollm2_emb8.json
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/deploy/llama_cpp_manual nice -n 10 python benchmarks/deploy_carry.py \
        --model gemma3-270m --with-f32 --out benchmarks/deploy_carry_gemma3.json
    python benchmarks/deploy_carry.py --table benchmarks/deploy_carry_smollm2.json

``--artifact DIR --artifact-label TEXT`` adds a slimkit artifact made elsewhere (e.g. a pipeline run's
``artifact/`` folder: quantization-aware distillation then autoround) in PyTorch and carried into GGUF, measured in
the same harness as the rows above; ``--skip-requantized`` leaves out the re-quantized counterfactual.
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


def quantize_with_llama_cpp(source: Path, target: Path) -> None:
    """llama.cpp's own Q4_0 quantizer, default tensor-type mixture (as ``llama-quantize source target Q4_0``)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 1
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
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
    """The table benchmarks/deploy_carry.md shows, from a results JSON."""
    lines = ["| weights | runtime | ppl (×fp32) | tasks (retained) | MB | tensor types | re-quantized |",
             "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        tasks = r.get("tasks") or {}
        sent_text = "; ".join(f"{name} {t['final']:.3f} ({t['retained']:.1%})" for name, t in tasks.items()) or "–"
        types = ", ".join(f"{n} {t}" for t, n in sorted((r.get("tensor_types") or {}).items())) or "–"
        requant = {True: "yes", False: "no"}.get(r.get("requantized"), "–")
        ppl = f"{r['perplexity']:.3f} (×{r['perplexity_ratio']:.4f})"
        lines.append(f"| {r['label']} | {r['runtime']} | {ppl} | {sent_text} "
                     f"| {r['size_bytes'] / 1e6:.1f} | {types} | {requant} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", help="print the markdown table of a results JSON and exit")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--embedding", default="int4", choices=["int4", "int8"],
                   help="the tied input embedding's codes (int8: Q8_0 in the carried file, as llama.cpp's mixture)")
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--task-samples", type=int, default=200)
    p.add_argument("--with-f32", action="store_true",
                   help="also slimkit's F32 GGUF of the fp32 model in llama.cpp (the family mapping's check) and the "
                        "tokenizer check: llama.cpp's tokens of each eval window's text against transformers'")
    p.add_argument("--out", default="benchmarks/deploy_carry_smollm2.json")
    p.add_argument("--tasks", default="sentiment", help="comma-separated task names (e.g. sentiment,cloze)")
    p.add_argument("--artifact", help="also measure this slimkit artifact folder, in PyTorch and carried into GGUF")
    p.add_argument("--artifact-label", default="slimkit artifact", help="how the --artifact rows are labelled")
    p.add_argument("--skip-requantized", action="store_true", help="leave out the re-quantized counterfactual row")
    args = p.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return

    import llama_cpp  # noqa: F401  (fail early: this benchmark is about llama.cpp)
    from slimkit_autoround import AutoRoundConfig, AutoRoundQuantizer
    from slimkit_gguf import FILE_NAME, GGUFConfig, GGUFExporter

    from slimkit.core.artifact import directory_size
    from slimkit.core.state import PipelineState
    from slimkit.data import build_splits
    from slimkit.deploy.evaluate import quality
    from slimkit.deploy.holdings import INT_WEIGHTS, int_weight_modules
    from slimkit.deploy.serving import TorchSession
    from slimkit.models import load_model
    from slimkit.pipeline.runner import save_artifact

    torch.set_num_threads(1)
    started = time.time()
    loaded = load_model(args.model)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    data = build_splits(tokenizer, seq_len=256, train_tokens=256, calibration_samples=1,
                        eval_tokens=args.eval_windows * 256)
    rows = []

    def measure(label: str, session, baseline: dict, **extra) -> dict:
        t0 = time.time()
        entry = quality(session, data.eval, tokenizer, args.tasks.split(",") if args.task_samples else [],
                        args.task_samples, baseline, label=label)
        entry.update(label=label, runtime=getattr(session, "runtime", "pytorch"),
                     runtime_version=getattr(session, "runtime_version", torch.__version__), **extra)
        entry["seconds"] = round(time.time() - t0, 1)
        print(json.dumps(entry), flush=True)
        return entry

    with tempfile.TemporaryDirectory(prefix="deploy-carry-") as tmp:
        root = Path(tmp)
        model.save_pretrained(root / "fp32", safe_serialization=True)
        reference = measure("PyTorch fp32", TorchSession(model), {}, size_bytes=directory_size(root / "fp32"))
        baseline = {"perplexity": reference["perplexity"],
                    "tasks": {name: {t["metric"]: t["final"]} for name, t in reference["tasks"].items()}}
        for task in reference["tasks"].values():
            task["retained"] = 1.0
        rows.append(reference)

        # llama.cpp's route from the fp32 model: F16 GGUF, then llama.cpp's Q4_0 quantizer
        def export(name: str, source: torch.nn.Module, **config) -> tuple[Path, dict]:
            folder = root / name
            folder.mkdir()
            facts = GGUFExporter(GGUFConfig(**config)).export(root, source, tokenizer, folder)
            return folder, facts

        if args.with_f32:
            f32, _ = export("f32", model, weights="f32")
            session = GGUFExporter.open(f32, threads=1)
            agreement = tokenizer_agreement(session, tokenizer, data.eval)
            rows.append(measure("fp32 → slimkit GGUF F32", session, baseline,
                                size_bytes=(f32 / FILE_NAME).stat().st_size,
                                tensor_types=tensor_types(f32 / FILE_NAME), tokenizer_agreement=agreement))
            del session
            (f32 / FILE_NAME).unlink()
        f16, _ = export("f16", model, weights="f16")
        (root / "llamacpp-q4_0").mkdir()
        quantize_with_llama_cpp(f16 / FILE_NAME, root / "llamacpp-q4_0" / FILE_NAME)
        llamacpp_file = root / "llamacpp-q4_0" / FILE_NAME

        # the autoround artifact (RTN, no calibration) and the model slimkit.load gives back
        state = PipelineState(copy.deepcopy(model), tokenizer, data, model)
        stage = AutoRoundQuantizer(AutoRoundConfig(method="rtn", bits=4, group_size=args.group_size, sym=True,
                                                   embedding=args.embedding))
        t0 = time.time()
        metrics = stage.apply(state)
        quantize_seconds = time.time() - t0
        save_artifact(state, root / "artifact", overwrite=False, records=[], model_info={"name": args.model})
        del state
        quantized = stage.load(root / "artifact", {})
        codes = int_weight_modules(quantized)
        label = f"autoround RTN int4 sym g{args.group_size}, embedding {args.embedding} (PyTorch)"
        rows.append(measure(label, TorchSession(quantized),
                            baseline, size_bytes=directory_size(root / "artifact"), quantized_modules=len(codes),
                            stored_bits_per_weight=metrics.get("stored_bits_per_weight"),
                            quantize_seconds=round(quantize_seconds, 1)))

        carried, carried_facts = export("carried", quantized)  # weights=auto: codes as Q4_0 blocks
        stripped = copy.deepcopy(quantized)
        for module in stripped.modules():
            if hasattr(module, INT_WEIGHTS):
                delattr(module, INT_WEIGHTS)
        embedding_type = {"int4": "q4_0", "int8": "q8_0"}[args.embedding]
        files = [("autoround codes carried → GGUF (slimkit gguf, weights=auto)", carried / FILE_NAME, carried_facts)]
        if not args.skip_requantized:
            requant, requant_facts = export("requantized", stripped, weights="q4_0", embeddings=embedding_type)
            files.append(("autoround dequantized → re-quantized by gguf-py (same types)", requant / FILE_NAME,
                          requant_facts))
        del stripped
        files.append(("fp32 → llama.cpp Q4_0 (llama_model_quantize, from slimkit's F16 GGUF)", llamacpp_file, None))
        if args.artifact:
            import slimkit

            recipe = slimkit.load(args.artifact)
            rows.append(measure(f"{args.artifact_label} (PyTorch)", TorchSession(recipe), baseline,
                                size_bytes=directory_size(Path(args.artifact)),
                                quantized_modules=len(int_weight_modules(recipe)), artifact=str(args.artifact)))
            folder, facts = export("recipe", recipe)
            del recipe
            files.append((f"{args.artifact_label} → GGUF (slimkit gguf, weights=auto)", folder / FILE_NAME, facts))
        for label, path, facts in files:
            session = GGUFExporter.open(path.parent, threads=1)
            extra = {"size_bytes": path.stat().st_size, "tensor_types": tensor_types(path)}
            if facts is not None:
                extra.update({k: facts[k] for k in ("format", "requantized", "carried_tensors", "requantized_tensors",
                                                    "notes")})
            rows.append(measure(label, session, baseline, **extra))
            del session
    for row in rows:
        row["perplexity_ratio"] = row["perplexity"] / reference["perplexity"]
    out = {"model": args.model, "provenance": loaded.provenance, "eval": data.info, "task_samples": args.task_samples,
           "scheme": f"int4 symmetric, groups of {args.group_size}, float16 scales, round-to-nearest (autoround "
                     f"method=rtn), tied embedding at {args.embedding} (round-to-nearest, same groups)",
           "threads": 1, "torch_threads": torch.get_num_threads(), "rows": rows,
           "versions": versions(), "load_average_start_end": [LOAD_START, os.getloadavg()],
           "machine": "shared 2-core machine (other jobs running)", "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "seconds": round(time.time() - started), "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


def tokenizer_agreement(session, tokenizer, windows: torch.Tensor) -> dict[str, int]:
    """How many eval windows' texts (decoded by transformers) llama.cpp tokenizes to the same ids as transformers."""
    same = 0
    for row in windows:
        text = tokenizer.decode(row.tolist())
        expected = tokenizer(text, add_special_tokens=False).input_ids
        got = session.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        same += int(list(got) == list(expected))
    return {"windows": int(windows.shape[0]), "identical": same}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "transformers", "gguf", "llama_cpp_python", "auto-round", "compressed-tensors", "slimkit"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            if dist == "llama_cpp_python":
                import llama_cpp

                out[dist] = llama_cpp.__version__
    return out


LOAD_START = os.getloadavg()

if __name__ == "__main__":
    main()
