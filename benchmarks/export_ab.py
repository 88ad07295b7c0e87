"""Several exports of one model in one runtime, timed against each other and fp32 in the same processes.

The pipeline times each export against PyTorch fp32 in its own fresh processes, so two exports of the same
architecture can only be compared across runs, with whatever else the machine did in between. This script
opens every export (``--export NAME=FOLDER``, folders an exporter wrote, e.g. a run's ``deploy/openvino``) and
the fp32 model in each of ``--processes`` fresh processes and times them **alternately, round by round**,
through the same calls as the pipeline (``slimkit.deploy.serving.time_sessions``: prefill of a 128-token
prompt without a cache, greedy decode with the KV cache; medians; pinned threads). It also records each
export's top-1 next-token agreement with fp32 on the prompt, so a broken export cannot post a fast time.

    OMP_NUM_THREADS=1 python benchmarks/export_ab.py --exporter openvino \\
        --export first=<run>/deploy/openvino --export second=<other run>/deploy/openvino \\
        --out benchmarks/export_ab_<what>.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exporter", help="the slimkit exporter that wrote the folders (openvino, onnx, ...)")
    p.add_argument("--export", action="append", default=[], metavar="NAME=FOLDER",
                   help="an export folder and the name it is reported under (give two or more)")
    p.add_argument("--model", default="smollm2-135m", help="the fp32 model the exports came from")
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="a new JSON file (an existing one is refused)")
    args = p.parse_args(argv)
    if not args.exporter or len(args.export) < 2 or not args.out:
        p.error("--exporter, two or more --export NAME=FOLDER and --out are required")
    if Path(args.out).exists():
        p.error(f"--out {args.out} exists; write a new file")
    exports = {}
    for item in args.export:
        name, sep, folder = item.partition("=")
        if not sep or not name or name == "fp32" or name in exports:
            p.error(f"--export {item!r}: expected NAME=FOLDER with a new name other than 'fp32'")
        if not Path(folder).is_dir():
            p.error(f"--export {item!r}: {folder} is not a folder")
        exports[name] = str(Path(folder).resolve())
    if args.processes < 1 or args.repeats < 1 or args.decode_tokens < 2:
        p.error("--processes and --repeats must be >= 1, --decode-tokens >= 2")

    from slimkit.core.artifact import atomic_write_text
    from slimkit.core.errors import SlimkitError
    from slimkit.core.plugin import Kind
    from slimkit.core.registry import default_registry
    from slimkit.data import build_splits
    from slimkit.deploy.serving import timing_processes
    from slimkit.models import load_model

    try:  # an unknown exporter is refused before any model loads
        default_registry().get(Kind.EXPORTER, args.exporter)
    except SlimkitError as error:
        p.error(str(error))

    loaded = load_model(args.model)
    # the prompt speed_deploy.py times: the first tokens of the held-out Wikipedia slice
    prompt = build_splits(loaded.tokenizer, seq_len=256, train_tokens=256, calibration_samples=1,
                          eval_tokens=16 * 256).eval[0, : args.prompt].tolist()
    del loaded
    spec = {"exporter": args.exporter, "exports": exports, "model": {"name": args.model}, "prompt": prompt,
            "threads": args.threads, "repeats": args.repeats, "decode_tokens": args.decode_tokens}
    load = [list(os.getloadavg())]
    try:  # fresh processes through the pipeline's own runner (slimkit.deploy.serving), one after another
        runs = timing_processes(spec, args.processes, "timing processes", "export_ab timing process",
                                after_each=lambda: load.append(list(os.getloadavg())))
    except SlimkitError as error:
        raise SystemExit(f"export_ab: {error}") from None

    def median(values) -> float | None:  # None: decode vanished in the timing noise in every process
        kept = [v for v in values if v is not None]
        return statistics.median(kept) if kept else None

    summary = {name: {"prefill_speedup": statistics.median(r["prefill_speedup"][name] for r in runs),
                      "decode_speedup": median(r["decode_speedup"][name] for r in runs),
                      "decode_tokens_per_s": median(r["timing"][name]["decode_tokens_per_s"] for r in runs),
                      "prefill_ms": statistics.median(r["timing"][name]["prefill_ms"] for r in runs)}
               for name in exports}
    summary["fp32"] = {"decode_tokens_per_s": median(r["timing"]["fp32"]["decode_tokens_per_s"] for r in runs),
                       "prefill_ms": statistics.median(r["timing"]["fp32"]["prefill_ms"] for r in runs)}
    out = {"command": " ".join([f"OMP_NUM_THREADS={args.threads}", "python", "benchmarks/export_ab.py",
                                *(sys.argv[1:] if argv is None else argv)]),
           "exporter": args.exporter, "exports": exports, "model": args.model, "threads": args.threads,
           "prompt_tokens": args.prompt, "decode_tokens": args.decode_tokens, "repeats": args.repeats,
           "condition": f"{args.processes} fresh processes, each timing fp32 and every export alternately, round by "
                        f"round ({args.repeats} rounds), medians; {args.threads} thread(s)",
           "summary": summary, "processes": runs, "load_average_before_and_after_each_process": load}
    atomic_write_text(args.out, json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
