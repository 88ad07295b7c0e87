"""ONNX Runtime and OpenVINO on SmolLM2-135M: the runtime's own quantization of the fp32 model (a) beside
slimkit's export (b), measured with the pipeline's deploy metrics.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/deploy_runtimes.py --out benchmarks/results/deploy_runtimes.json

Rows:
- (a) ``ort-builder``: ``python -m onnxruntime_genai.models.builder -i <fp32 HF folder> -p int8|int4 -e cpu``
  with the builder's defaults (symmetric blocks of 32, accuracy_level=4), exactly as a user would run it;
  ``ov-nncf``: the fp32 model converted (torch.export → openvino.convert_model; optimum-intel does not
  co-install with transformers>=5.24), compressed with ``nncf.compress_weights`` in NNCF's default mode (int8:
  INT8_ASYM per channel; int4: INT4_ASYM, group 64 because NNCF's default 128 does not divide SmolLM2's 576) and
  run at OpenVINO's default inference and KV-cache precisions on this CPU (bf16, u8). Since the plugin writes a
  stateful IR (KV cache as model state, optimum-intel's layout), so do these rows.
- (b) ``slimkit``: the ``onnx`` / ``openvino`` exporter plugins on the model slimkit loaded, with their own
  defaults (OpenVINO: f32 inference unless the row says bf16).
- (c) ``--artifact LABEL=DIR`` (repeatable): a slimkit artifact made elsewhere (e.g. a pipeline run's ``model/``
  folder), loaded with ``slimkit.load`` and exported by the ``openvino`` plugin with ``weights=auto`` — its integer
  codes carried as compressed weights — at bf16 inference, with OpenVINO's dynamic int8 activation quantization
  (its CPU default) and without it (``dq-off``).

Every row: perplexity on the eval windows (the pipeline's default data slice), 2-shot sentiment on
``--task-samples`` sentences (fp32 PyTorch beside it), size on disk, prefill/decode speed against PyTorch fp32
from ``slimkit.deploy.serving`` (fresh processes, each timing both alternately at 1 thread; medians), and the
peak resident memory of a fresh process that opens the export and runs one prefill and one decode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent


#: The child's own peak RSS in MB. Not ``ru_maxrss``: Linux carries the high-water RSS of the image a process
#: exec()s from into it, so a child of this (large) process would report at least this process's size — the
#: reports written before this fix (up to deploy_runtimes_smollm2_openvino_carried.json) did.
#: ``slimkit.core.memory.peak_rss_bytes`` reads ``VmHWM``, the high-water mark of the child's own address space.
PRINT_PEAK = "from slimkit.core.memory import peak_rss_bytes\nprint(peak_rss_bytes() / 2**20)\n"


def peak_memory_mb(exporter: str, folder: Path, prompt: list[int], decode_tokens: int) -> float:
    """Peak RSS (MB) of a fresh process that opens the export, runs one prefill and one greedy decode."""
    code = (
        "import json, sys, torch\n"
        "from pathlib import Path\n"
        "from slimkit.core.plugin import Kind\n"
        "from slimkit.core.registry import default_registry\n"
        "torch.set_num_threads(1)\n"
        "cls = default_registry().get(Kind.EXPORTER, sys.argv[1])\n"
        "s = cls.open(Path(sys.argv[2]), threads=1)\n"
        "ids = torch.tensor([json.loads(sys.argv[3])])\n"
        "s.logits(ids); s.generate(ids, int(sys.argv[4]))\n"
        + PRINT_PEAK)
    done = subprocess.run([sys.executable, "-c", code, exporter, str(folder), json.dumps(prompt), str(decode_tokens)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return float(done.stdout.strip().splitlines()[-1])


def torch_peak_memory_mb(model_name: str, prompt: list[int], decode_tokens: int) -> float:
    code = (
        "import json, sys, torch\n"
        "from slimkit.models import load_model\n"
        "from slimkit.deploy.serving import TorchSession\n"
        "torch.set_num_threads(1)\n"
        "s = TorchSession(load_model(sys.argv[1]).model)\n"
        "ids = torch.tensor([json.loads(sys.argv[2])])\n"
        "s.logits(ids); s.generate(ids, int(sys.argv[3]))\n"
        + PRINT_PEAK)
    done = subprocess.run([sys.executable, "-c", code, model_name, json.dumps(prompt), str(decode_tokens)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return float(done.stdout.strip().splitlines()[-1])


def runtime_default_ort(hf_dir: Path, out: Path, precision: str) -> dict:
    """(a): the builder's CLI with its defaults on the fp32 Hugging Face folder."""
    with tempfile.TemporaryDirectory() as cache:
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
                   "-p", precision, "-e", "cpu", "-c", cache]
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    settings = {"exporter": "onnx", "weights": precision, "scheme": "builder defaults: symmetric blocks of 32, "
                "accuracy_level=4" if precision != "fp32" else "fp32"}
    (out / "slimkit_export.json").write_text(json.dumps(settings))
    return {"command": " ".join(command[1:]), **settings}


def runtime_default_ov(model, tokenizer, out: Path, bits: str) -> dict:
    """(a): NNCF's default compression mode on the plugin's stateful IR, run at OpenVINO's default inference and
    KV-cache precisions (bf16 and u8 on this CPU)."""
    import nncf
    import openvino
    from slimkit_openvino import MODEL_XML, SETTINGS_FILE, _kv_shapes, convert

    ov_model = convert(model)
    kwargs = {"mode": nncf.CompressWeightsMode.INT8_ASYM} if bits == "int8" else {
        "mode": nncf.CompressWeightsMode.INT4_ASYM, "group_size": 64}
    ov_model = nncf.compress_weights(ov_model, **kwargs)
    openvino.save_model(ov_model, out / MODEL_XML, compress_to_fp16=False)
    tokenizer.save_pretrained(out)
    core = openvino.Core()
    precision = str(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))
    cache = str(core.get_property("CPU", "KV_CACHE_PRECISION"))  # e.g. <Type: 'uint8_t'>
    cache_names = {"uint8": "u8", "u8": "u8", "bfloat16": "bf16", "bf16": "bf16", "float32": "f32", "f32": "f32"}
    settings = {"exporter": "openvino", "inference_precision": "bf16" if "bfloat16" in precision or "bf16" in precision else "f32",
                "kv_cache_precision": next((v for k, v in cache_names.items() if k in cache), "f32"),
                "openvino_default_kv_cache_precision": cache, "stateful": True,
                "kv_shapes": _kv_shapes(model), "weights": bits, "openvino_default_precision": precision,
                "scheme": f"nncf.compress_weights({', '.join(f'{k}={v}' for k, v in kwargs.items())})"}
    (out / SETTINGS_FILE).write_text(json.dumps(settings))
    return settings


def fp32_tasks(model, tokenizer, tasks: list[str], samples: int, windows) -> dict:
    """The fp32 model's task scores, shaped as ``slimkit.deploy.evaluate.quality`` reads its baseline."""
    from types import SimpleNamespace

    from slimkit.evaluation.tasks import TaskSet

    task_set = TaskSet(tasks)
    task_set.bind(SimpleNamespace(eval=windows), tokenizer)
    scores = task_set.evaluate(model, tokenizer, samples, 4, "fp32")
    out = {"tasks": scores}
    if "sentiment" in scores:
        out["sentiment_accuracy"] = scores["sentiment"][task_set.infos["sentiment"].metric]
    return out


#: --artifact-runtimes: the rows each one adds per artifact, as (label suffix, exporter, config besides weights=auto)
ARTIFACT_ROWS = {
    "openvino": [("openvino carried bf16", "openvino", {"inference_precision": "bf16"}),
                 ("openvino carried bf16 dq-off", "openvino", {"inference_precision": "bf16",
                                                              "dynamic_quantization": "off"})],
    # OpenVINO's own default KV cache (what its (a) rows run with)
    "openvino-u8kv": [("openvino carried bf16 u8-kv", "openvino", {"inference_precision": "bf16",
                                                                   "kv_cache_precision": "u8"})],
    # the codes MatMulNBits holds carried, the rest quantized by the builder
    "onnx": [("onnx carried", "onnx", {})],
}


def folder_name(label: str) -> str:
    """The folder under ``--keep`` that holds a row's export."""
    return label.replace(" ", "_").replace("(", "").replace(")", "")


def pool(rows: str, reports: list[str], out: str) -> None:
    """Per-process speed ratios of the rows named in ``rows`` (';'-separated) pooled over several reports, with
    their medians, written to ``out``: ``--pool "<row>;<row>" a.json b.json ... out.json``."""
    import statistics

    if Path(out).exists():
        raise SystemExit(f"{out} exists; results files are never overwritten: choose a new name")
    result = {"command": "python " + " ".join(sys.argv), "reports": reports, "rows": {}}
    loaded = {path: json.loads(Path(path).read_text())["rows"] for path in reports}
    for label in [r.strip() for r in rows.split(";") if r.strip()]:
        runs, decode, prefill = [], [], []
        for path, report_rows in loaded.items():
            for row in report_rows:
                if row["row"] == label:
                    d = [p["decode_speedup"] for p in row["speed"]["processes"]]
                    f = [p["prefill_speedup"] for p in row["speed"]["processes"]]
                    runs.append({"report": path, "decode_median": row["speed"]["decode_speedup"],
                                 "prefill_median": row["speed"]["prefill_speedup"], "processes": len(d),
                                 "tasks": row.get("tasks")})
                    decode += d
                    prefill += f
        if not runs:
            raise SystemExit(f"row {label!r} is in none of the reports")
        result["rows"][label] = {"runs": runs, "processes": len(decode),
                                 "decode_median": statistics.median(decode), "prefill_median": statistics.median(prefill),
                                 "decode_min": min(decode), "prefill_min": min(prefill)}
        print(label, json.dumps({k: v for k, v in result["rows"][label].items() if k != "runs"}))
    Path(out).write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def remeasure_memory(report_path: Path, out: str) -> None:
    """Peak RSS (``VmHWM``) of fresh processes for each row of ``report_path`` whose export was kept (``--keep``),
    and of PyTorch fp32, written to ``out``: the correction for reports measured with ``ru_maxrss``."""
    if Path(out).exists():
        raise SystemExit(f"{out} exists; results files are never overwritten: choose a new name")
    from slimkit.data import build_splits
    from slimkit.models import load_model

    report = json.loads(report_path.read_text())
    command = report["command"].split()
    keep = Path(command[command.index("--keep") + 1])
    name, timing = report["model"]["name"], report["timing"]
    loaded = load_model(name)
    prompt = build_splits(loaded.tokenizer, eval_tokens=report["eval_tokens"]).eval[0, :timing["prompt_tokens"]].tolist()
    del loaded
    rows = []
    for row in report["rows"]:
        folder = keep / folder_name(row["row"])
        rows.append({"row": row["row"], "folder": str(folder), "reported_ru_maxrss_mb": row["peak_memory_mb"],
                     "peak_memory_mb": peak_memory_mb(row["exporter"], folder, prompt, timing["decode_tokens"])})
        print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python " + " ".join(sys.argv), "report": str(report_path), "model": name,
              "method": "VmHWM of a fresh process that opens the export (or loads the fp32 model), runs one prefill of "
                        f"{timing['prompt_tokens']} tokens and one {timing['decode_tokens']}-token greedy decode",
              "baseline_fp32_pytorch": {"reported_ru_maxrss_mb": report["baseline_fp32_pytorch"]["peak_memory_mb"],
                                        "peak_memory_mb": torch_peak_memory_mb(name, prompt, timing["decode_tokens"])},
              "rows": rows, "load_average_end": list(os.getloadavg())}
    Path(out).write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def render(path: str) -> str:
    """The report as a markdown table (what benchmarks/deploy_runtimes.md shows): the sentiment column when the
    report scored sentiment (as every report before session 14 did), otherwise one column per task."""
    report = json.loads(Path(path).read_text())
    base = report["baseline_fp32_pytorch"]
    base_tasks = base.get("tasks") or {}
    names = ["sentiment"] if "sentiment" in base_tasks or not base_tasks else list(base_tasks)
    if names == ["sentiment"]:
        head = f"sentiment {base.get('sentiment_accuracy')}"
    else:
        head = ", ".join(f"{n} {_task_score(base_tasks[n]):.3f}" for n in names)
    lines = [f"fp32 PyTorch: perplexity {base['perplexity']:.2f}, {head}, "
             f"{base['size_bytes'] / 1e6:.0f} MB, peak RSS {base['peak_memory_mb']:.0f} MB", "",
             f"| row | weights (scheme) | ppl (×fp32) | {' | '.join(names)} | MB (×smaller) | prefill × | decode × | "
             "peak RSS MB | load avg |",
             "|---|---|---|" + "---|" * len(names) + "---|---|---|---|---|"]
    for row in report["rows"]:
        if row.get("failed"):  # the runtime's own tool did not produce a model
            lines.append(f"| {row['row']} | failed (exit {row.get('exit_code')}): {row.get('error')} | – | "
                         + "– | " * len(names) + "– | – | – | – | – |")
            continue
        facts, speed = row["facts"], row["speed"]
        cells = []
        for name in names:
            task = (row.get("tasks") or {}).get(name, {})
            final, retained = task.get("final"), task.get("retained")
            if names == ["sentiment"]:
                cells.append(f"{final if final is None else f'{final:.3f}'}")
            else:
                cells.append("–" if final is None else f"{final:.3f}" + (f" ({retained:.1%})" if retained else ""))
        precision = facts.get("inference_precision")
        scheme = facts.get("scheme", "") + (f"; inference {precision}" if precision else "")
        if facts.get("kv_cache_precision"):
            scheme += f", KV cache {facts['kv_cache_precision']} (stateful)"
        label = row["row"]
        if "bf16" in label and precision == "f32":  # the first runs misread OpenVINO's default ("bfloat16")
            label = label.replace("bf16", "**ran at f32**")
        lines.append(
            f"| {label} | {scheme} | {row['perplexity']:.2f} (×{row['perplexity'] / base['perplexity']:.3f}) | "
            f"{' | '.join(cells)} | {row['size_bytes'] / 1e6:.0f} "
            f"(×{base['size_bytes'] / row['size_bytes']:.1f}) | {speed['prefill_speedup']:.2f} | "
            f"{speed['decode_speedup']:.2f} | {row['peak_memory_mb']:.0f} | "
            f"{', '.join(f'{x:.1f}' for x in speed['load_average'])} |")
    return "\n".join(lines)


def _task_score(scores: dict) -> float:
    """A baseline task's primary score (acc where the task has it, else its first metric)."""
    return scores["acc"] if "acc" in scores else next(iter(scores.values()))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        print(render(sys.argv[2]))
        return
    if len(sys.argv) >= 5 and sys.argv[1] == "--pool":
        pool(sys.argv[2], sys.argv[3:-1], sys.argv[-1])
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--memory":
        remeasure_memory(Path(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", default="all", help="row labels separated by ';', or 'all'")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--task-samples", type=int, default=200)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--keep", default=None, help="folder to keep the exports in (default: a temporary one)")
    parser.add_argument("--artifact", action="append", default=[], metavar="LABEL=DIR",
                        help="a slimkit artifact to export with its codes carried (rows '<LABEL> → openvino ...')")
    parser.add_argument("--artifact-runtimes", default="openvino",
                        help="where each --artifact goes, separated by ',': openvino (rows '<LABEL> → openvino carried "
                             "bf16 (c)' and '... dq-off (c)'), openvino-u8kv ('... bf16 u8-kv (c)': OpenVINO's default "
                             "u8 KV cache), onnx (row '<LABEL> → onnx carried (c)': weights=auto, "
                             "the codes MatMulNBits holds carried, the rest quantized by the builder)")
    parser.add_argument("--onnx-context-length", type=int, default=None,
                        help="exporter.onnx.context_length for the --artifact onnx rows (default: the model's own)")
    parser.add_argument("--tasks", default="sentiment", help="tasks separated by ',' (the first is the headline)")
    parser.add_argument("--baseline-from", default=None,
                        help="reuse the fp32 PyTorch baseline of an earlier report (same model, data and task samples)")
    args = parser.parse_args()
    if Path(args.out).exists():
        parser.error(f"{args.out} exists; results files are never overwritten: choose a new name")
    runtimes = [r.strip() for r in args.artifact_runtimes.split(",") if r.strip()]
    if not set(runtimes) <= set(ARTIFACT_ROWS):
        parser.error(f"--artifact-runtimes {args.artifact_runtimes!r}: expected some of {', '.join(ARTIFACT_ROWS)}")

    from slimkit_onnx import OnnxConfig, OnnxExporter
    from slimkit_openvino import OpenVinoConfig, OpenVinoExporter

    from slimkit.data import build_splits
    from slimkit.deploy.evaluate import quality
    from slimkit.deploy.serving import serving_speed
    from slimkit.evaluation import perplexity
    from slimkit.models import load_model

    torch.set_num_threads(1)
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    data = build_splits(tokenizer, eval_tokens=args.eval_tokens)
    prompt = data.eval[:1, :args.prompt_tokens]
    eval_cfg = {"threads": 1, "processes": args.processes, "latency_processes": args.processes, "repeats": args.repeats,
                "decode_tokens": args.decode_tokens}
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.task_samples else []

    started = time.time()
    if args.baseline_from:
        earlier = json.loads(Path(args.baseline_from).read_text())
        same = (earlier["eval_tokens"], earlier["task_samples"], earlier["model"]["name"]) == (
            args.eval_tokens, args.task_samples, args.model) and set(tasks) <= set(
            earlier["baseline_fp32_pytorch"].get("tasks", {}))
        if not same:
            parser.error(f"--baseline-from {args.baseline_from} was measured with other settings")
        baseline = {**earlier["baseline_fp32_pytorch"], "measured_in": args.baseline_from}
    else:
        baseline = {"perplexity": perplexity(model, data.eval, 4, desc="perplexity [fp32]")}
        if tasks:
            baseline.update(fp32_tasks(model, tokenizer, tasks, args.task_samples, data.eval))
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            baseline["size_bytes"] = sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors"))
        baseline["peak_memory_mb"] = torch_peak_memory_mb(args.model, prompt[0].tolist(), args.decode_tokens)
    hf_dir = Path(loaded.path)

    rows = {
        "ort-builder-int8 (a)": ("onnx", lambda out: runtime_default_ort(hf_dir, out, "int8")),
        "ort-builder-int4 (a)": ("onnx", lambda out: runtime_default_ort(hf_dir, out, "int4")),
        "slimkit onnx fp32 (b)": ("onnx", OnnxExporter(OnnxConfig(weights="fp32"))),
        "slimkit onnx int8 (b)": ("onnx", OnnxExporter(OnnxConfig(weights="int8"))),
        "slimkit onnx int4 (b)": ("onnx", OnnxExporter(OnnxConfig(weights="int4"))),
        "ov-nncf-int8 bf16 (a)": ("openvino", lambda out: runtime_default_ov(model, tokenizer, out, "int8")),
        "ov-nncf-int4 bf16 (a)": ("openvino", lambda out: runtime_default_ov(model, tokenizer, out, "int4")),
        "slimkit openvino fp32 f32 (b)": ("openvino", OpenVinoExporter(OpenVinoConfig(weights="fp32"))),
        "slimkit openvino int8 f32 (b)": ("openvino", OpenVinoExporter(OpenVinoConfig(weights="int8"))),
        "slimkit openvino int8 bf16 (b)": ("openvino", OpenVinoExporter(OpenVinoConfig(weights="int8", inference_precision="bf16"))),
        "slimkit openvino int4 sym g64 f32 (b)": ("openvino", OpenVinoExporter(OpenVinoConfig(weights="int4", symmetric=True))),
        "slimkit openvino int4 sym g64 bf16 (b)": ("openvino", OpenVinoExporter(OpenVinoConfig(
            weights="int4", symmetric=True, inference_precision="bf16"))),
        # llama.cpp Q4_0's grid (sym blocks of 32) in NNCF: the runtime's own counterpart of the q4_0 recipe
        "slimkit openvino int4 sym g32 bf16 (b)": ("openvino", OpenVinoExporter(OpenVinoConfig(
            weights="int4", symmetric=True, group_size=32, inference_precision="bf16"))),
        "slimkit openvino int8 sym bf16 (b)": ("openvino", OpenVinoExporter(OpenVinoConfig(
            weights="int8", symmetric=True, inference_precision="bf16"))),
        "slimkit openvino int8 bf16 u8-kv (b)": ("openvino", OpenVinoExporter(OpenVinoConfig(
            weights="int8", inference_precision="bf16", kv_cache_precision="u8"))),
        # NNCF's mixed precision: this share of the decoder in int4 (sym g64), the rest int8 (NNCF picks the layers)
        **{f"slimkit openvino int4 sym g64 r{round(r * 100)} bf16 (b)": ("openvino", OpenVinoExporter(OpenVinoConfig(
            weights="int4", symmetric=True, int4_ratio=r, inference_precision="bf16"))) for r in (0.25, 0.5, 0.75)},
    }
    sources = {}  # row label -> the model it exports (default: the fp32 model)
    for spec in args.artifact:
        name, _, folder = spec.partition("=")
        if not folder or not Path(folder).is_dir():
            parser.error(f"--artifact {spec!r}: expected LABEL=DIR with an existing artifact folder")
        import slimkit

        artifact = slimkit.load(folder)
        for runtime in runtimes:
            for suffix, exporter_name, settings in ARTIFACT_ROWS[runtime]:
                if exporter_name == "onnx" and args.onnx_context_length:
                    settings = {**settings, "context_length": args.onnx_context_length}
                    suffix = f"{suffix} context {args.onnx_context_length}"
                label = f"{name} → {suffix} (c)"
                exporter_cls, config_cls = (OnnxExporter, OnnxConfig) if exporter_name == "onnx" else (
                    OpenVinoExporter, OpenVinoConfig)
                rows[label] = (exporter_name, exporter_cls(config_cls(weights="auto", **settings)))
                sources[label] = (artifact, folder)
    chosen = list(rows) if args.rows == "all" else [r.strip() for r in args.rows.split(";") if r.strip()]
    chosen += [label for label in sources if label not in chosen]
    keep = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="deploy-runtimes-"))
    results = []
    for label in chosen:
        exporter_name, how = rows[label]
        folder = keep / folder_name(label)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        print(f"== {label}", flush=True)
        start = time.perf_counter()
        if callable(how):
            try:
                facts = how(folder)
            except subprocess.CalledProcessError as failed:  # the runtime's own tool refused this model: a result
                lines = (failed.stderr or b"").decode(errors="replace").strip().splitlines()
                results.append({"row": label, "exporter": exporter_name, "failed": True,
                                "command": " ".join(map(str, failed.cmd[1:])), "exit_code": failed.returncode,
                                "error": lines[-1] if lines else ""})
                print(f"   failed: {results[-1]['error']}", flush=True)
                continue
        else:
            source, source_dir = sources.get(label, (model, hf_dir))
            facts = how.export(Path(source_dir), source, tokenizer, folder)
        export_s = time.perf_counter() - start
        cls = OnnxExporter if exporter_name == "onnx" else OpenVinoExporter
        session = cls.open(folder, threads=1)
        row = {"row": label, "exporter": exporter_name, "artifact": str(sources[label][1]) if label in sources else None, "runtime_version": session.runtime_version, "facts": facts,
               "export_seconds": round(export_s, 1), "size_bytes": sum(p.stat().st_size for p in folder.rglob("*")
                                                                        if p.is_file() and "token" not in p.name)}
        row.update(quality(session, data.eval, tokenizer, tasks, args.task_samples, baseline, label=label))
        del session
        row["speed"] = serving_speed(exporter_name, folder, {"name": args.model}, 0, prompt, eval_cfg)
        row["peak_memory_mb"] = peak_memory_mb(exporter_name, folder, prompt[0].tolist(), args.decode_tokens)
        row["load_average_after"] = list(os.getloadavg())
        results.append(row)
        print(json.dumps({k: row[k] for k in ("row", "perplexity", "size_bytes", "peak_memory_mb")}), flush=True)
        print(f"   prefill x{row['speed']['prefill_speedup']:.2f} decode x{row['speed']['decode_speedup']:.2f}", flush=True)
        write(args.out, loaded, data, args, eval_cfg, baseline, results, started, final=False)
    write(args.out, loaded, data, args, eval_cfg, baseline, results, started, final=True)
    print(f"wrote {args.out}")


def write(out, loaded, data, args, eval_cfg, baseline, results, started, final: bool) -> None:
    """The report so far: ``<out>.partial.json`` after each row, ``<out>`` once every row ran."""
    import onnxruntime
    import openvino

    report = {
        "command": "python " + " ".join(sys.argv),
        "model": {"name": args.model, "provenance": loaded.provenance},
        "data": data.info, "eval_tokens": args.eval_tokens, "task_samples": args.task_samples,
        "timing": {**eval_cfg, "prompt_tokens": args.prompt_tokens, "threads_torch": torch.get_num_threads()},
        "baseline_fp32_pytorch": baseline,
        "rows": results,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "openvino": openvino.get_version(), "python": platform.python_version()},
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_average_end": list(os.getloadavg()), "wall_seconds": round(time.time() - started),
        "note": "the machine is shared by several agents: load averages are recorded per row; ratios are noisy",
        "complete": final,
    }
    target = Path(out) if final else Path(out).with_suffix(".partial.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=1, default=str))
    if final:
        Path(out).with_suffix(".partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
