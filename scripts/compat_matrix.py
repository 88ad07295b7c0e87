"""Run the model-family x backend compatibility matrix (slimkit.testing.compat) and write
benchmarks/compat_matrix.json and benchmarks/compat_matrix.md (the README's table).

    OMP_NUM_THREADS=1 python scripts/compat_matrix.py

Each cell builds a tiny random model of the family from its config (2 layers, hidden 64), saves it as a
Hugging Face folder (what ``model.path`` points at) and runs one backend through the pipeline's steps:
pre-load model check (``config.json`` only) -> load -> apply -> save_artifact -> load, comparing logits.
tests/test_compat_matrix.py asserts every cell's declared outcome and that this JSON agrees with it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
OUT_JSON = HERE.parent / "benchmarks" / "compat_matrix.json"
OUT_MD = HERE.parent / "benchmarks" / "compat_matrix.md"
COMMAND = "OMP_NUM_THREADS=1 python scripts/compat_matrix.py"


def main() -> int:
    import transformers

    import slimkit
    from slimkit.testing.compat import BACKENDS, FAMILIES, cells, expected, markdown, model_type, run_cell

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="slimkit-compat-") as tmp:
        root, work = Path(tmp) / "models", Path(tmp) / "work"
        work.mkdir(parents=True)
        for family, backend in tqdm(cells(), desc="compat matrix", unit="cell"):
            result = run_cell(family, backend, root, work)
            result["expected"] = expected(family, backend)
            results.append(result)
    mismatches = [r for r in results if r["outcome"] != r["expected"]]
    data = {
        "command": COMMAND,
        "what": "tiny random models (built from config, 2 layers, hidden 64) x backend; 'works' = pipeline pre-load "
                "check, load, apply, save_artifact, load, reloaded logits compared; 'refused: <key>' = ConfigError "
                "from the model's config.json before any weights load",
        "families": {f: model_type(f) for f in FAMILIES},
        "backends": {b: {"kind": s.kind, "backend": s.name, "settings": s.settings, "note": s.note}
                     for b, s in BACKENDS.items()},
        "cells": results,
        "mismatches": len(mismatches),
        "seconds_total": round(time.perf_counter() - start, 1),
        "machine": {"loadavg_before": load_before, "loadavg_after": os.getloadavg(), "torch_threads": 1,
                    "cpus": os.cpu_count(), "note": "shared 2-core machine, other jobs running",
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "slimkit": slimkit.__version__},
    }
    OUT_JSON.write_text(json.dumps(data, indent=1) + "\n")
    OUT_MD.write_text(
        "# Model families x backends\n\n"
        f"Written by `{COMMAND}` into `benchmarks/compat_matrix.json` ({data['seconds_total']} s for "
        f"{len(results)} cells on a shared 2-core machine, load average {load_before[0]:.1f}); "
        "`tests/test_compat_matrix.py` asserts every cell.\n\n"
        "✓ = works end to end on a tiny random model of the family: the backend is applied, the artifact is "
        "saved through the pipeline and reloads to the same logits. ✗ `key` = refused from the model's "
        "`config.json` before any weights load, by a slimkit `ConfigError` on `key` that names the model type, "
        "the backend and what is supported.\n\n"
        + markdown(results) + "\n\n"
        "Column settings: " + "; ".join(f"`{b}`: {s.name} {s.settings}" for b, s in BACKENDS.items()) + ".\n")
    print(markdown(results))
    print(f"{len(mismatches)} cells differ from the declared outcome", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
