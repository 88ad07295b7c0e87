"""Issue 15's frontier, drawn: size and speed against task accuracy in three families of points.

Families:

- ``pytorch``: slimkit's in-process backends (the model slimkit holds, run by PyTorch);
- ``runtime``: "runtime alone" — a runtime's own quantization of the unmodified fp32 model (route (a) of
  ``deploy.md`` / ``deploy_runtimes.md``);
- ``slimkit_runtime``: "slimkit → runtime" — what slimkit's exporters put into a runtime: route (b), slimkit's
  export of the unmodified model with the runtime's quantizer (drawn hollow), and route (c), slimkit's own
  compressed artifact (its integer codes carried) measured in the runtime (drawn filled).

No model runs here. Every point is read from a committed JSON listed in ``SMOLLM2_POINTS`` /
``GEMMA3_POINTS`` (file, row, and which quantities it contributes), and every quantity is normalised against
the fp32 PyTorch baseline *of the JSON it comes from*: sentiment retained = accuracy / that JSON's fp32
accuracy; size reduction = that JSON's fp32 bytes / the point's bytes; perplexity ratio likewise; prefill and
decode speedups are the ratios that JSON measured against fp32 (its timing condition is recorded with them).
A listed file, row or field that is missing stops the script with an error naming it (no silent skipping).

    python benchmarks/frontier_families.py --out benchmarks/frontier_families_session15.json \
        --png benchmarks/frontier_families_session15.png --png-gemma3 benchmarks/frontier_families_session15_gemma3.png

Files that already exist are refused (documents cite them): each new drawing gets new paths.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The issue's target region (``benchmarks/case_study_mobile.md``): at least this much smaller / faster
#: decode, and at least this fraction of fp32's sentiment accuracy kept.
TARGET_SIZE = 8.0
TARGET_DECODE = 8.0
TARGET_PREFILL = 3.0
TARGET_RETAINED = 0.97

FAMILIES = {
    "pytorch": "PyTorch (slimkit's in-process backends)",
    "runtime": "runtime alone (runtime's own quantization of the fp32 model)",
    "slimkit_runtime": "slimkit → runtime (hollow: slimkit's export of the fp32 model; filled: slimkit's artifact carried)",
}


#: Kinds of JSON whose scripts time nothing: their points have no speed (they are left off the decode panel).
UNTIMED_KINDS = ("carry", "int4")


class SourceError(SystemExit):
    """A listed JSON, row or field is missing: the frontier is not drawn from partial data."""

    def __init__(self, message: str):
        super().__init__(f"frontier_families: {message}")


@dataclass(frozen=True)
class Source:
    """One committed JSON and the row of it a point takes quantities from.

    ``kind`` names the script that wrote the file (it decides where the row, the fp32 baseline and the timing
    live); ``take`` lists the quantities taken: ``quality`` (size, sentiment, and perplexity unless another
    source takes ``perplexity``) and/or ``speed``. ``samples``/``samples_note`` declare the sentiment sample count for a JSON that does not record
    it (the document that states it is named in the note); ``baseline_from`` names another JSON of the same
    script and eval settings whose fp32 baseline applies (for arms run with ``--skip-fp32``).
    """

    path: str
    kind: str
    row: object
    take: tuple | None = None  # default: quality, plus speed where the kind of JSON times anything
    samples: int | None = None
    samples_note: str | None = None
    baseline_from: str | None = None


@dataclass(frozen=True)
class Point:
    family: str
    label: str  # short label drawn beside the marker
    model: str
    scheme: str
    sources: tuple
    route: str = ""  # "a", "b", "c" for runtime points
    note: str = ""
    task: str = "sentiment"  # the task whose accuracy "retained" is (a built-in slimkit task the JSONs scored)


# --------------------------------------------------------------------------------------------- the points

SMOLLM2 = "smollm2-135m"
CARRY_Q4_0 = "benchmarks/deploy_carry_smollm2_q4_0_recipe.json"
Q4_0_RECIPE = "experiment=case_study_mobile_q4_0 (QAT-KD on the grid → autoround RTN int4 sym g32, table int8)"
OV_MIXED = "benchmarks/deploy_runtimes_smollm2_openvino_mixed.json"
OV_CARRIED = "benchmarks/deploy_runtimes_smollm2_openvino_carried.json"
OV_CARRIED96 = "benchmarks/deploy_runtimes_smollm2_openvino_carried96.json"
MOBILE_OV = "benchmarks/case_study_mobile_smollm2_openvino/report.json"
CARRY_GEMMA_Q4_0 = "benchmarks/deploy_carry_gemma3_q4_0_recipe_w32.json"
GEMMA_Q4_0_RECIPE = ("experiment=case_study_mobile_q4_0 model=gemma3 (QAT-KD on the grid → autoround RTN int4 sym g32, "
                     "table int8)")
GEMMA3 = "gemma3-270m"
MOBILE = "benchmarks/case_study_mobile_smollm2"
TASKMIX_RECIPE = ("experiment=case_study_mobile_openvino data.path=runs/sentiment_mix.jsonl (96 QAT-KD steps on the "
                  "task-prompt mix → autoround RTN int4 sym g32)")
PRUNED_RECIPE = ("experiment=case_study_mobile_pruned data.path=runs/sentiment_mix.jsonl (12.5% of the MLP channels "
                 "pruned → 192 QAT-KD steps → autoround RTN int4 sym g64, table int4 g64)")
PRUNED_QAT384 = ("experiment=case_study_mobile_pruned data.path=runs/sentiment_mix.jsonl pruner.recovery_steps=192 "
                 "distiller.recovery_lr=1e-4 distiller.max_steps=384 (12.5% of the MLP channels pruned → 192 float "
                 "recovery KD steps → 384 QAT-KD steps, lr 5e-5 → autoround RTN int4 sym g64, table int4 g64)")
OV_TASKMIX = "benchmarks/deploy_runtimes_smollm2_openvino_taskmix.json"
OV_ROWTABLE = "benchmarks/deploy_runtimes_smollm2_openvino_rowtable.json"
OV_INT4TABLE = "benchmarks/deploy_runtimes_smollm2_openvino_int4table.json"
ORT_CARRIED = "benchmarks/deploy_runtimes_smollm2_onnx_carried.json"
ET_CARRIED = "benchmarks/deploy_executorch_smollm2_carried.json"

SMOLLM2_POINTS = [
    # ---- PyTorch: slimkit's in-process backends
    Point("pytorch", "int8 (n=1000)", SMOLLM2,
          "quantizer=int8 defaults: SmoothQuant a=0.5, int8 per-channel weights, per-token int8 activations, int8 tied table",
          (Source("benchmarks/speed_smollm2.json", "speed", "int8_smooth", ("quality",)),
           Source("benchmarks/speed_deploy_smollm2.json", "speed_deploy", "summary", ("speed",))),
          note="quality from speed.py's int8_smooth arm; speed from speed_deploy.py's serving timing of the same "
               "default config (a CLI artifact, speed.md)"),
    Point("pytorch", "int8 (n=200)", SMOLLM2, "quantizer=int8 defaults (as above)",
          (Source("benchmarks/quantization_files/smollm2.json", "quantization", "int8 (smooth, emb int8)"),)),
    Point("pytorch", "bnb nf4", SMOLLM2, "bitsandbytes NF4, double quantization, blocks of 64; embedding fp32",
          (Source("benchmarks/quantization_files/smollm2.json", "quantization", "bnb nf4 (dq)"),)),
    Point("pytorch", "bnb int8", SMOLLM2, "bitsandbytes LLM.int8, outlier threshold 6",
          (Source("benchmarks/quantization_files/smollm2.json", "quantization", "bnb int8 (t=6)"),)),
    Point("pytorch", "quanto w8", SMOLLM2, "optimum-quanto int8 weights",
          (Source("benchmarks/quantization_files/smollm2.json", "quantization", "quanto w8"),)),
    Point("pytorch", "quanto w4", SMOLLM2, "optimum-quanto int4 asymmetric, groups of 96/128",
          (Source("benchmarks/quantization_files/smollm2.json", "quantization", "quanto w4 (g96/128)"),)),
    Point("pytorch", "quanto w4 budget", SMOLLM2, "quanto int4 + scan-chosen int8 blocks (4.27 bits)",
          (Source("benchmarks/quantization_files/smollm2.json", "quantization", "quanto budget 4.267 b {4,8}"),)),
    Point("pytorch", "quanto w8a8", SMOLLM2, "quanto int8 weights + static int8 activations",
          (Source("benchmarks/quantization_files/smollm2.json", "quantization", "quanto w8a8"),)),
    Point("pytorch", "default job", SMOLLM2, "magnitude 20% + quanto int8 weights (`make run`)",
          (Source("benchmarks/default_run2/report.json", "report", "final"),)),
    Point("pytorch", "case_study (MLP 35%+kd+int8)", SMOLLM2,
          "torch_pruning MLP 35% → kd 100 steps → quantizer=int8",
          (Source("benchmarks/case_study_report.json", "report", "final", samples=200,
                  samples_note="200 sentences per benchmarks/case_study.md; the report predates tasks.samples"),),
          note="speed timed alternately in the run's own process (the report has no `timing`: before serving timing)"),
    Point("pytorch", "int4 RTN g64 (n=100)", SMOLLM2,
          "autoround RTN int4 sym g64, tied table int4 (4.25 bits)",
          (Source("benchmarks/int4_calibrated_smollm2_rtn.json", "int4", {"group_size": 64, "method": "rtn"}),)),
    Point("pytorch", "int4 opt-RTN (n=100)", SMOLLM2,
          "autoround opt-RTN int4 sym g64 (8 windows), tied table int4",
          (Source("benchmarks/int4_calibrated_smollm2_optrtn.json", "int4", {"group_size": 64, "method": "optrtn"},
                  baseline_from="benchmarks/int4_calibrated_smollm2_rtn.json"),)),
    Point("pytorch", "int4 RTN (n=1000)", SMOLLM2, "autoround RTN int4 sym g64, tied table int4",
          (Source("benchmarks/int4_calibrated_smollm2_sr20_1000.json", "int4", {"group_size": 64, "method": "rtn"}),)),
    Point("pytorch", "int4 SignRound (n=1000)", SMOLLM2,
          "autoround SignRound 20 iters × 16 windows, int4 sym g64, tied table int4",
          (Source("benchmarks/int4_calibrated_smollm2_sr20_1000.json", "int4",
                  {"group_size": 64, "method": "signround", "iters": 20}),)),
    Point("pytorch", "int4 RTN, table int8", SMOLLM2, "autoround RTN int4 sym g64, tied table int8 (5.1 bits)",
          (Source("benchmarks/deploy_carry_smollm2_emb8.json", "carry",
                  "autoround RTN int4 sym g64, embedding int8 (PyTorch)"),)),
    Point("pytorch", "mobile: QAT-KD + int4", SMOLLM2,
          "experiment=case_study_mobile: QAT-KD 24 steps → autoround RTN int4 sym g64, table int4",
          (Source("benchmarks/case_study_mobile_smollm2/report.json", "report", "final"),)),
    Point("pytorch", "mobile, QAT on the grid + int4", SMOLLM2,
          "experiment=case_study_mobile at 458c77d: QAT-KD 24 steps on AutoRound's own grid (table included) → "
          "autoround RTN int4 sym g64, table int4",
          (Source("benchmarks/case_study_mobile_smollm2_qatgrid/report.json", "report", "final"),)),
    Point("pytorch", "int4 RTN g32, table int8 (n=1000)", SMOLLM2,
          "autoround RTN int4 sym g32, tied table int8 (llama.cpp Q4_0's tensor types)",
          (Source(CARRY_Q4_0, "carry", "autoround RTN int4 sym g32, embedding int8 (PyTorch)"),)),
    Point("pytorch", "q4_0 recipe: QAT on the grid + int4 (n=1000)", SMOLLM2,
          "experiment=case_study_mobile_q4_0: QAT-KD 24 steps on the grid → autoround RTN int4 sym g32, table int8",
          (Source(CARRY_Q4_0, "carry", f"{Q4_0_RECIPE} (PyTorch)"),)),

    # ---- runtime alone: the runtime's own quantization of the fp32 model, route (a)
    Point("runtime", "llama.cpp Q8_0", SMOLLM2, "llama_model_quantize Q8_0 from F16",
          (Source("benchmarks/deploy_smollm2.json", "deploy", "(a) llama.cpp quantizer Q8_0 (from F16)"),),
          route="a"),
    Point("runtime", "llama.cpp Q4_0 (n=100)", SMOLLM2,
          "llama_model_quantize Q4_0 from F16 (sym groups of 32; tied table Q8_0)",
          (Source("benchmarks/deploy_smollm2.json", "deploy", "(a) llama.cpp quantizer Q4_0 (from F16)"),),
          route="a"),
    Point("runtime", "llama.cpp Q4_0 (n=200)", SMOLLM2,
          "llama_model_quantize Q4_0 from F16 (sym groups of 32; tied table Q8_0)",
          (Source("benchmarks/deploy_carry_smollm2.json", "carry",
                  "fp32 → llama.cpp Q4_0 (llama_model_quantize, from slimkit's F16 GGUF)"),),
          route="a"),
    Point("runtime", "llama.cpp Q4_0 (n=1000)", SMOLLM2,
          "llama_model_quantize Q4_0 from F16 (sym groups of 32; tied table Q8_0)",
          (Source(CARRY_Q4_0, "carry", "fp32 → llama.cpp Q4_0 (llama_model_quantize, from slimkit's F16 GGUF)"),),
          route="a"),
    # session 16: llama.cpp's own sub-4-bit file types (k-quants only where rows are multiples of 256: down_proj)
    *(Point("runtime", f"llama.cpp {name}", SMOLLM2,
            f"llama_model_quantize {name} from F16, default mixture, no importance matrix ({types})",
            (Source("benchmarks/deploy_smollm2_subq4.json", "deploy", f"(a) llama.cpp quantizer {name} (from F16)",
                    ("quality",)),),
            route="a", note="quality only: timed beside the fresh-clone test suite (load 1.4-2.4)")
      for name, types in (("IQ4_XS", "27 IQ4_XS, 180 IQ4_NL fallbacks, 3 Q5_K, table Q8_0"),
                          ("Q3_K_M", "29 Q4_K, 1 Q5_K, 180 Q4_0/Q5_0/Q5_1 fallbacks, table Q8_0"),
                          ("Q2_K", "30 Q3_K, 180 Q4_0 fallbacks, table Q8_0"))),
    Point("runtime", "OpenVINO int8 (n=1000)", SMOLLM2,
          "nncf.compress_weights int8_asym per channel; bf16 inference, u8 KV cache (stateful)",
          (Source(OV_MIXED, "runtimes", "ov-nncf-int8 bf16 (a)"),), route="a"),
    Point("runtime", "ORT int4", SMOLLM2, "onnxruntime-genai builder int4: sym blocks of 32, accuracy_level 4",
          (Source("benchmarks/deploy_runtimes_smollm2_onnx_ov8.json", "runtimes", "ort-builder-int4 (a)"),),
          route="a"),
    Point("runtime", "ORT int4 (n=200)", SMOLLM2, "onnxruntime-genai builder int4: sym blocks of 32",
          (Source("benchmarks/deploy_carry_smollm2_onnx.json", "carry", "fp32 → the builder's int4 (blocks of 32)"),),
          route="a"),
    Point("runtime", "ORT int8", SMOLLM2, "onnxruntime-genai builder int8: sym blocks of 32; embedding fp32",
          (Source("benchmarks/deploy_runtimes_smollm2_onnx_int8.json", "runtimes", "ort-builder-int8 (a)"),),
          route="a"),
    Point("runtime", "OpenVINO int8", SMOLLM2,
          "nncf.compress_weights int8_asym per channel; bf16 inference, u8 KV cache (stateful)",
          (Source("benchmarks/deploy_runtimes_smollm2_openvino_stateful_rerun.json", "runtimes",
                  "ov-nncf-int8 bf16 (a)"),), route="a"),
    Point("runtime", "OpenVINO int4", SMOLLM2,
          "nncf.compress_weights int4_asym g64, table int8; bf16 inference (stateful)",
          (Source("benchmarks/deploy_runtimes_smollm2_openvino_stateful.json", "runtimes", "ov-nncf-int4 bf16 (a)"),),
          route="a"),

    # ---- slimkit → runtime, route (b): slimkit's exporter on the unmodified model, the runtime's quantizer
    Point("slimkit_runtime", "gguf Q8_0", SMOLLM2, "slimkit gguf exporter weights=q8_0 from fp32 (gguf-py)",
          (Source("benchmarks/deploy_smollm2.json", "deploy", "(b) slimkit gguf export Q8_0 (from fp32)"),),
          route="b"),
    Point("slimkit_runtime", "gguf Q4_0", SMOLLM2, "slimkit gguf exporter weights=q4_0 from fp32 (gguf-py)",
          (Source("benchmarks/deploy_smollm2.json", "deploy", "(b) slimkit gguf export Q4_0 (from fp32)"),),
          route="b"),
    Point("slimkit_runtime", "onnx int4", SMOLLM2, "slimkit onnx exporter int4: the builder's scheme",
          (Source("benchmarks/deploy_runtimes_smollm2_onnx_ov8.json", "runtimes", "slimkit onnx int4 (b)"),),
          route="b"),
    Point("slimkit_runtime", "onnx int8", SMOLLM2, "slimkit onnx exporter int8: the builder's scheme",
          (Source("benchmarks/deploy_runtimes_smollm2_onnx_int8.json", "runtimes", "slimkit onnx int8 (b)"),),
          route="b"),
    Point("slimkit_runtime", "openvino int8 bf16", SMOLLM2,
          "slimkit openvino exporter weights=int8 (NNCF int8_asym), bf16 inference (stateful)",
          (Source("benchmarks/deploy_runtimes_smollm2_openvino_stateful_rerun.json", "runtimes",
                  "slimkit openvino int8 bf16 (b)"),), route="b"),
    Point("slimkit_runtime", "openvino int8 f32", SMOLLM2,
          "slimkit openvino exporter weights=int8, f32 inference (the plugin's exact default; stateful)",
          (Source("benchmarks/deploy_runtimes_smollm2_openvino_stateful.json", "runtimes",
                  "slimkit openvino int8 f32 (b)"),), route="b"),
    Point("slimkit_runtime", "openvino int4 sym g64", SMOLLM2,
          "slimkit openvino exporter int4 sym g64 (NNCF), table int8; bf16 inference (stateful)",
          (Source("benchmarks/deploy_runtimes_smollm2_openvino_stateful.json", "runtimes",
                  "slimkit openvino int4 sym g64 bf16 (b)"),), route="b"),
    Point("slimkit_runtime", "executorch 8da8w", SMOLLM2, "slimkit executorch exporter: torchao 8da8w, int8 embedding",
          (Source("benchmarks/deploy_executorch_smollm2_quantized.json", "runtimes",
                  "executorch 8da8w + int8 embedding"),), route="b"),
    Point("slimkit_runtime", "executorch 8da4w", SMOLLM2,
          "slimkit executorch exporter: torchao 8da4w g32, int8 embedding",
          (Source("benchmarks/deploy_executorch_smollm2_quantized.json", "runtimes",
                  "executorch 8da4w g32 + int8 embedding"),), route="b"),

    Point("slimkit_runtime", "openvino int8 bf16 (n=1000)", SMOLLM2,
          "slimkit openvino exporter weights=int8 (NNCF int8_asym), bf16 inference (stateful)",
          (Source(OV_MIXED, "runtimes", "slimkit openvino int8 bf16 (b)"),), route="b"),
    Point("slimkit_runtime", "openvino int4 sym g64 (n=1000)", SMOLLM2,
          "slimkit openvino exporter int4 sym g64 (NNCF), table int8; bf16 inference (stateful)",
          (Source(OV_MIXED, "runtimes", "slimkit openvino int4 sym g64 bf16 (b)"),), route="b"),
    Point("slimkit_runtime", "openvino 50% int4", SMOLLM2,
          "slimkit openvino exporter int4 sym g64 for 50% of the decoder (NNCF's choice), rest and table int8; bf16",
          (Source(OV_MIXED, "runtimes", "slimkit openvino int4 sym g64 r50 bf16 (b)"),), route="b"),

    Point("runtime", "OpenVINO int4 asym g64 (n=1000)", SMOLLM2,
          "nncf.compress_weights default INT4_ASYM g64 on the fp32 model, OpenVINO's default bf16 / u8 KV cache",
          (Source(OV_CARRIED, "runtimes", "ov-nncf-int4 bf16 (a)"),), route="a"),
    Point("slimkit_runtime", "openvino int4 sym g32 (n=1000)", SMOLLM2,
          "slimkit openvino exporter int4 sym g32 (NNCF; llama.cpp Q4_0's grid), table int8; bf16 inference",
          (Source(OV_CARRIED, "runtimes", "slimkit openvino int4 sym g32 bf16 (b)"),), route="b"),

    # ---- slimkit → runtime, route (c): slimkit's compressed artifact, its integer codes carried
    Point("slimkit_runtime", "q4_0 recipe → OpenVINO (n=1000)", SMOLLM2,
          "case_study_mobile_q4_0 artifact → OpenVINO compressed weights (int4 sym g32 + int8 table), codes "
          "carried; bf16, OpenVINO's dynamic int8 activations",
          (Source(OV_CARRIED, "runtimes", "q4_0 recipe → openvino carried bf16 (c)"),), route="c"),
    Point("slimkit_runtime", "96-step q4_0 recipe → OpenVINO (n=1000)", SMOLLM2,
          "case_study_mobile_openvino artifact (96 QAT steps → int4 sym g32 + int8 table) → OpenVINO compressed "
          "weights, codes carried; bf16, dynamic int8 activations",
          (Source(OV_CARRIED96, "runtimes", "q4_0 recipe, 96 QAT steps → openvino carried bf16 (c)"),), route="c"),
    Point("slimkit_runtime", "96-step q4_0 recipe → llama.cpp", SMOLLM2,
          "case_study_mobile_openvino (96 QAT steps → int4 sym g32 + int8 table) → GGUF Q4_0 + Q8_0, codes carried",
          (Source(MOBILE_OV, "report", "deployment:gguf"),), route="c"),
    Point("slimkit_runtime", "mobile, QAT on grid → OpenVINO (n=1000)", SMOLLM2,
          "case_study_mobile at 458c77d artifact (int4 sym g64, table int4) → OpenVINO compressed weights, codes "
          "carried; bf16, dynamic int8 activations",
          (Source(OV_CARRIED, "runtimes", "qatgrid recipe → openvino carried bf16 (c)"),), route="c"),
    Point("slimkit_runtime", "mobile → llama.cpp", SMOLLM2,
          "case_study_mobile (QAT-KD → autoround int4 sym g64, table int4) → GGUF Q4_0, codes carried",
          (Source("benchmarks/case_study_mobile_smollm2/report.json", "report", "deployment:gguf"),),
          route="c"),
    Point("slimkit_runtime", "mobile → ORT", SMOLLM2,
          "case_study_mobile → ONNX MatMulNBits, codes carried",
          (Source("benchmarks/case_study_mobile_smollm2/report.json", "report", "deployment:onnx"),),
          route="c"),
    Point("slimkit_runtime", "mobile, QAT on grid → llama.cpp", SMOLLM2,
          "case_study_mobile at 458c77d (QAT on AutoRound's grid → int4 sym g64, table int4) → GGUF Q4_0, carried",
          (Source("benchmarks/case_study_mobile_smollm2_qatgrid/report.json", "report", "deployment:gguf"),),
          route="c"),
    Point("slimkit_runtime", "mobile, QAT on grid → ORT", SMOLLM2,
          "case_study_mobile at 458c77d → ONNX MatMulNBits, codes carried",
          (Source("benchmarks/case_study_mobile_smollm2_qatgrid/report.json", "report", "deployment:onnx"),),
          route="c"),
    Point("slimkit_runtime", "q4_0 recipe → llama.cpp (n=1000)", SMOLLM2,
          "case_study_mobile_q4_0 (QAT on the grid → int4 sym g32, table int8) → GGUF Q4_0 + Q8_0, codes carried: "
          "llama.cpp Q4_0's own tensor types and size",
          (Source(CARRY_Q4_0, "carry", f"{Q4_0_RECIPE} → GGUF (slimkit gguf, weights=auto)"),
           Source("benchmarks/case_study_mobile_smollm2_q4_0/report.json", "report", "deployment:gguf", ("speed",))),
          route="c"),
    Point("slimkit_runtime", "int4 RTN → llama.cpp", SMOLLM2,
          "autoround RTN int4 sym g64, table int4 → GGUF Q4_0, codes carried",
          (Source("benchmarks/deploy_carry_smollm2.json", "carry",
                  "autoround codes carried → GGUF (slimkit gguf, weights=auto)"),), route="c"),
    Point("slimkit_runtime", "int4 RTN → ORT", SMOLLM2,
          "autoround RTN int4 sym g64, table int4 → ONNX MatMulNBits (blocks of 64), codes carried",
          (Source("benchmarks/deploy_carry_smollm2_onnx.json", "carry",
                  "autoround codes carried → MatMulNBits (slimkit onnx, weights=auto)"),), route="c"),
    Point("slimkit_runtime", "int4 RTN, table int8 → llama.cpp", SMOLLM2,
          "autoround RTN int4 sym g64, table int8 → GGUF Q4_0 + Q8_0, codes carried",
          (Source("benchmarks/deploy_carry_smollm2_emb8.json", "carry",
                  "autoround codes carried → GGUF (slimkit gguf, weights=auto)"),), route="c"),

    # ---- sessions 9-15 (case_study_mobile.md): distillation on the task-prompt mix, the int4 table, and 12.5% of
    # the MLP channels pruned for 8x. PyTorch points are the pipeline artifacts (serving timing); route (c) points
    # the same artifacts carried into a runtime, from the pipeline's deployments or a deploy benchmark's JSON.
    Point("pytorch", "task-mix recipe (n=200)", SMOLLM2, f"{TASKMIX_RECIPE}, table int8 per 32",
          (Source(f"{MOBILE}_taskmix/report.json", "report", "final"),)),
    Point("slimkit_runtime", "task-mix recipe → llama.cpp (n=200)", SMOLLM2,
          f"{TASKMIX_RECIPE}, table int8 → GGUF Q4_0 + Q8_0, codes carried",
          (Source(f"{MOBILE}_taskmix/report.json", "report", "deployment:gguf"),), route="c"),
    Point("slimkit_runtime", "task-mix recipe → OpenVINO (n=1000)", SMOLLM2,
          f"{TASKMIX_RECIPE}, table int8 → OpenVINO compressed weights, codes carried; bf16, dynamic int8 activations",
          (Source(OV_TASKMIX, "runtimes", "q4_0 recipe, 96 QAT steps, sentiment-prompt mix → openvino carried bf16 (c)"),),
          route="c"),
    Point("runtime", "ORT int4 (n=1000)", SMOLLM2, "onnxruntime-genai builder int4: sym blocks of 32, accuracy_level 4",
          (Source(ORT_CARRIED, "runtimes", "ort-builder-int4 (a)"),), route="a"),
    Point("slimkit_runtime", "task-mix recipe → ORT (n=1000)", SMOLLM2,
          f"{TASKMIX_RECIPE}, table int8 → ONNX MatMulNBits, codes carried",
          (Source(ORT_CARRIED, "runtimes", "q4_0 recipe, 96 QAT steps, sentiment-prompt mix → onnx carried (c)"),),
          route="c"),
    Point("runtime", "OpenVINO int4 asym g64 (rowtable run, n=1000)", SMOLLM2,
          "nncf.compress_weights default INT4_ASYM g64 on the fp32 model, bf16 / u8 KV cache",
          (Source(OV_ROWTABLE, "runtimes", "ov-nncf-int4 bf16 (a)"),), route="a"),
    Point("slimkit_runtime", "task-mix, table per row → OpenVINO (n=1000)", SMOLLM2,
          f"{TASKMIX_RECIPE}, table int8 one scale per row → OpenVINO, codes carried; bf16, u8 KV cache",
          (Source(OV_ROWTABLE, "runtimes", "q4_0 recipe, 96 QAT steps, sentiment-prompt mix, table scale per row → "
                                           "openvino carried bf16 u8-kv (c)"),), route="c"),
    Point("pytorch", "task-mix, int4 table (n=200)", SMOLLM2, f"{TASKMIX_RECIPE}, table int4 g32 (4.63 bits)",
          (Source(f"{MOBILE}_taskmix_int4table/report.json", "report", "final"),)),
    Point("slimkit_runtime", "task-mix, int4 table → llama.cpp (n=200)", SMOLLM2,
          f"{TASKMIX_RECIPE}, table int4 → GGUF, every tensor Q4_0, codes carried",
          (Source(f"{MOBILE}_taskmix_int4table/report.json", "report", "deployment:gguf"),), route="c"),
    Point("slimkit_runtime", "task-mix, int4 table → OpenVINO (n=1000)", SMOLLM2,
          f"{TASKMIX_RECIPE}, table int4 → OpenVINO, codes carried; bf16, u8 KV cache",
          (Source(OV_INT4TABLE, "runtimes", "q4_0 recipe, 96 QAT steps, sentiment-prompt mix, int4 table → openvino "
                                            "carried bf16 u8-kv (c)"),), route="c"),
    Point("slimkit_runtime", "executorch 8da4w (n=1000)", SMOLLM2,
          "slimkit executorch exporter: torchao 8da4w g32, int8 embedding, from fp32",
          (Source(ET_CARRIED, "runtimes", "executorch 8da4w g32 + int8 embedding"),), route="b"),
    Point("slimkit_runtime", "task-mix, gptq grid → ExecuTorch (n=1000)", SMOLLM2,
          "experiment=case_study_mobile_executorch (96 QAT steps on the task-prompt mix → int4 sym g32 on the gptq "
          "grid, table int8 per row) → .pte, XNNPACK 8da4w, every code carried",
          (Source("benchmarks/deploy_executorch_smollm2_gptq.json", "runtimes",
                  "slimkit task-mix recipe on the gptq grid (case_study_mobile_executorch) → executorch 8da4w (c)"),),
          route="c"),
    Point("pytorch", "pruned 12.5% MLP (n=200)", SMOLLM2, PRUNED_RECIPE,
          (Source(f"{MOBILE}_pruned/report.json", "report", "final"),)),
    Point("slimkit_runtime", "pruned 12.5% MLP → OpenVINO (n=200)", SMOLLM2,
          f"{PRUNED_RECIPE} → OpenVINO, codes carried; bf16, u8 KV cache",
          (Source(f"{MOBILE}_pruned/report.json", "report", "deployment:openvino"),), route="c"),
    Point("slimkit_runtime", "pruned + 192 recovery steps → OpenVINO (n=200)", SMOLLM2,
          f"{PRUNED_RECIPE}, pruner.recovery_steps=192 distiller.recovery_lr=1e-4 → OpenVINO, codes carried",
          (Source(f"{MOBILE}_pruned_recovered/report.json", "report", "deployment:openvino"),), route="c"),
    Point("pytorch", "pruned + recovery + QAT (n=200)", SMOLLM2,
          f"{PRUNED_RECIPE} with 192 float recovery steps first (pruner.recovery_steps=192 distiller.recovery_lr=1e-4)",
          (Source(f"{MOBILE}_pruned_recovered/report.json", "report", "final"),)),
    Point("pytorch", "pruned + recovery, no QAT (n=200)", SMOLLM2,
          ("experiment=case_study_mobile_pruned data.path=runs/sentiment_mix.jsonl pruner.recovery_steps=192 "
           "distiller.recovery_lr=1e-4 distiller.max_steps=0 (12.5% of the MLP channels pruned → 192 float "
           "recovery KD steps → autoround RTN int4 sym g64, table int4 g64; no QAT)"),
          (Source(f"{MOBILE}_pruned_recovered_noqat/report.json", "report", "final", ("quality",)),),
          note="quality only: the run was timed under the test suite's load (case_study_mobile.md, session 14)"),
    Point("pytorch", "pruned + recovery + 384 QAT steps (n=200)", SMOLLM2, PRUNED_QAT384,
          (Source(f"{MOBILE}_pruned_qat384/report.json", "report", "final"),)),
    Point("slimkit_runtime", "pruned + recovery + 384 QAT → llama.cpp (n=200)", SMOLLM2,
          f"{PRUNED_QAT384} → GGUF Q4_0 (groups of 64 written as two blocks of 32), codes carried",
          (Source(f"{MOBILE}_pruned_qat384/report.json", "report", "deployment:gguf"),), route="c",
          note="timed while a second pipeline run timed its own exports (load 2.0; llama.cpp's decode ratio held "
               "9.0-9.4x across the three processes)"),
    Point("slimkit_runtime", "pruned + recovery + 384 QAT → OpenVINO (n=200)", SMOLLM2,
          f"{PRUNED_QAT384} → OpenVINO, codes carried",
          (Source(f"{MOBILE}_pruned_qat384/report.json", "report", "deployment:openvino", ("quality",)),),
          route="c", note="quality only: OpenVINO's timing in this run collapsed under a second run's timing "
                          "(decode 2.5-6.1x); export_ab_smollm2_pruned_openvino.json times it alone"),    Point("slimkit_runtime", "pruned + recovery + 384 QAT → OpenVINO (n=1000)", SMOLLM2,
          f"{PRUNED_QAT384} → OpenVINO compressed weights, codes carried; bf16, u8 KV cache",
          (Source("benchmarks/deploy_runtimes_smollm2_openvino_pruned.json", "runtimes",
                  "pruned recipe, recovery + 384 QAT steps → openvino carried bf16 u8-kv (c)"),), route="c"),
]

GEMMA3_POINTS = [
    Point("pytorch", "int8", GEMMA3, "quantizer=int8 defaults (SmoothQuant, int8 tied table)",
          (Source("benchmarks/quantization_files/gemma3_sentiment.json", "quantization", "int8 (smooth, emb int8)",
                  ("quality",)),
           Source("benchmarks/quantization_files/gemma3.json", "quantization", "int8 (smooth, emb int8)",
                  ("perplexity",)),
           Source("benchmarks/speed_deploy_gemma3.json", "speed_deploy", "summary", ("speed",))),
          note="size and sentiment from quantization.py's sentiment pass, perplexity from its first pass; speed "
               "from speed_deploy.py's serving timing of the same default config"),
    Point("pytorch", "int8 no smooth", GEMMA3, "quantizer=int8 smooth=false",
          (Source("benchmarks/quantization_files/gemma3_sentiment.json", "quantization", "int8 (no smooth, emb int8)",
                  ("quality",)),
           Source("benchmarks/quantization_files/gemma3.json", "quantization", "int8 (no smooth, emb int8)",
                  ("speed", "perplexity")))),
    Point("pytorch", "quanto w4", GEMMA3, "optimum-quanto int4 asymmetric, groups of 128; embedding fp32",
          (Source("benchmarks/quantization_files/gemma3_sentiment.json", "quantization", "quanto w4 (g96/128)",
                  ("quality",)),
           Source("benchmarks/quantization_files/gemma3.json", "quantization", "quanto w4 (g96/128)",
                  ("speed", "perplexity")))),
    Point("pytorch", "quanto w8", GEMMA3, "optimum-quanto int8 weights; embedding fp32",
          (Source("benchmarks/quantization_files/gemma3_sentiment.json", "quantization", "quanto w8", ("quality",)),
           Source("benchmarks/quantization_files/gemma3.json", "quantization", "quanto w8",
                  ("speed", "perplexity")))),
    Point("pytorch", "bnb nf4", GEMMA3, "bitsandbytes NF4, double quantization; embedding fp32",
          (Source("benchmarks/quantization_files/gemma3_sentiment.json", "quantization", "bnb nf4 (dq)", ("quality",)),
           Source("benchmarks/quantization_files/gemma3.json", "quantization", "bnb nf4 (dq)",
                  ("speed", "perplexity")))),
    Point("pytorch", "int4 RTN g64", GEMMA3, "autoround RTN int4 sym g64, tied table int4",
          (Source("benchmarks/int4_calibrated_gemma3_rtn.json", "int4", {"group_size": 64, "method": "rtn"}),)),
    Point("pytorch", "int4 RTN g128", GEMMA3, "autoround RTN int4 sym g128, tied table int4",
          (Source("benchmarks/int4_calibrated_gemma3_rtn.json", "int4", {"group_size": 128, "method": "rtn"}),)),
    Point("pytorch", "int4 opt-RTN g64", GEMMA3, "autoround opt-RTN int4 sym g64 (8 windows), tied table int4",
          (Source("benchmarks/int4_calibrated_gemma3_optrtn.json", "int4", {"group_size": 64, "method": "optrtn"},
                  baseline_from="benchmarks/int4_calibrated_gemma3_rtn.json"),)),
    Point("runtime", "OpenVINO int8", GEMMA3,
          "nncf.compress_weights int8_asym; bf16 inference, u8 KV cache (stateful)",
          (Source("benchmarks/deploy_runtimes_gemma3_openvino_stateful.json", "runtimes", "ov-nncf-int8 bf16 (a)"),),
          route="a"),
    Point("slimkit_runtime", "openvino int8 bf16", GEMMA3,
          "slimkit openvino exporter weights=int8, bf16 inference (stateful)",
          (Source("benchmarks/deploy_runtimes_gemma3_openvino_stateful.json", "runtimes",
                  "slimkit openvino int8 bf16 (b)"),), route="b"),
    Point("runtime", "llama.cpp Q4_0", GEMMA3,
          "llama.cpp's own Q4_0 of the fp32 model (llama_model_quantize; table Q8_0)",
          (Source(CARRY_GEMMA_Q4_0, "carry", "fp32 → llama.cpp Q4_0 (llama_model_quantize, from slimkit's F16 GGUF)"),),
          route="a"),
    Point("slimkit_runtime", "q4_0 recipe → llama.cpp", GEMMA3,
          "case_study_mobile_q4_0 on Gemma-3 (QAT-KD on the grid → int4 sym g32, table int8) → GGUF, codes carried: "
          "llama.cpp Q4_0's own tensor types and size",
          (Source(CARRY_GEMMA_Q4_0, "carry", f"{GEMMA_Q4_0_RECIPE} → GGUF (slimkit gguf, weights=auto)"),
           Source("benchmarks/case_study_mobile_gemma3_q4_0/report.json", "report", "deployment:gguf", ("speed",))),
          route="c"),
]

#: Gemma-3-270M on the analogy task (deploy_gemma3_tasks.md, session 14): quality from the session-14 JSONs (700
#: analogies, one timing process at load 2-4, so their speed is not used), speed from the earlier quiet timings of
#: the same recipes (sessions 9-13; those artifacts reproduce the session-14 perplexity to the printed digit).
OV_GEMMA_ANALOGY = "benchmarks/deploy_runtimes_gemma3_analogy_openvino.json"
ORT_GEMMA_ANALOGY = "benchmarks/deploy_runtimes_gemma3_analogy_onnx.json"
ET_GEMMA_ANALOGY = "benchmarks/deploy_executorch_gemma3_analogy.json"
CARRY_GEMMA_ANALOGY = "benchmarks/deploy_carry_gemma3_analogy.json"
OV_GEMMA_G64ROW = "benchmarks/deploy_runtimes_gemma3_openvino_g64row.json"
OV_GEMMA_C = "calibrated opt-RTN int4 sym g64, table scale per row → openvino carried bf16 u8-kv (c)"
ORT_GEMMA_C = "calibrated opt-RTN int4 sym g32, table int4 → onnx carried (c)"
ET_GEMMA_A = "executorch 8da4w g32 + int8 embedding + 8da8w lm_head"
ET_GEMMA_C = "calibrated AWQ int4 g32 on the gptq grid, table per row → executorch 8da4w (c)"
Q4_0_CALIBRATED = "experiment=q4_0_calibrated model=gemma3 (calibrated opt-RTN int4 sym g32, table int8)"
GEMMA3_ANALOGY_POINTS = [
    Point("pytorch", "int4 RTN g32, table int8", GEMMA3, "autoround RTN int4 sym g32, tied table int8",
          (Source(CARRY_GEMMA_ANALOGY, "carry", "autoround RTN int4 sym g32, embedding int8 (PyTorch)"),),
          task="analogy"),
    Point("pytorch", "q4_0_calibrated", GEMMA3, Q4_0_CALIBRATED,
          (Source(CARRY_GEMMA_ANALOGY, "carry", f"{Q4_0_CALIBRATED} (PyTorch)"),), task="analogy"),
    Point("pytorch", "int4_calibrated_openvino", GEMMA3,
          "experiment=int4_calibrated_openvino model=gemma3 (calibrated opt-RTN int4 sym g64, table int8 per row)",
          (Source("benchmarks/q4_0_calibrated_gemma3_g64row_analogy/report.json", "report", "final", ("quality",)),),
          task="analogy", note="quality only: timed in the run's process under load"),
    Point("pytorch", "AWQ, gptq grid", GEMMA3,
          "autoround AWQ int4 g32 on the gptq grid, table int8 per row (the ExecuTorch recipe)",
          (Source("benchmarks/q4_0_calibrated_gemma3_awq_gptq_analogy/report.json", "report", "final", ("quality",)),),
          task="analogy", note="quality only: timed in the run's process under load"),
    Point("runtime", "llama.cpp Q4_0", GEMMA3, "llama_model_quantize Q4_0 of the fp32 model (table Q8_0)",
          (Source(CARRY_GEMMA_ANALOGY, "carry",
                  "fp32 → llama.cpp Q4_0 (llama_model_quantize, from slimkit's F16 GGUF)"),), route="a",
          task="analogy", note="no timing: the same tensor types, so the same kernels, as the (c) file"),
    Point("slimkit_runtime", "q4_0_calibrated → llama.cpp", GEMMA3, f"{Q4_0_CALIBRATED} → GGUF, codes carried",
          (Source(CARRY_GEMMA_ANALOGY, "carry", f"{Q4_0_CALIBRATED} → GGUF (slimkit gguf, weights=auto)"),
           Source("benchmarks/q4_0_calibrated_gemma3/report.json", "report", "deployment:gguf", ("speed",))),
          route="c", task="analogy"),
    Point("runtime", "OpenVINO int4 asym g64", GEMMA3, "nncf.compress_weights INT4_ASYM g64 of the fp32 model",
          (Source(OV_GEMMA_ANALOGY, "runtimes", "ov-nncf-int4 bf16 (a)", ("quality",)),
           Source(OV_GEMMA_G64ROW, "runtimes", "ov-nncf-int4 bf16 (a)", ("speed",))), route="a", task="analogy"),
    Point("slimkit_runtime", "int4_calibrated_openvino → OpenVINO", GEMMA3,
          "experiment=int4_calibrated_openvino model=gemma3 → OpenVINO compressed weights, codes carried",
          (Source(OV_GEMMA_ANALOGY, "runtimes", OV_GEMMA_C, ("quality",)),
           Source(OV_GEMMA_G64ROW, "runtimes", OV_GEMMA_C, ("speed",))), route="c", task="analogy"),
    Point("slimkit_runtime", "onnx int4 (builder)", GEMMA3,
          "slimkit onnx exporter, the builder's int4 of fp32 (its CLI fails on Gemma-3: KeyError 'rope_type')",
          (Source(ORT_GEMMA_ANALOGY, "runtimes", "slimkit onnx int4 (b)", ("quality",)),
           Source("benchmarks/deploy_runtimes_gemma3_onnx.json", "runtimes", "slimkit onnx int4 (b)", ("speed",))),
          route="b", task="analogy"),
    Point("slimkit_runtime", "q4_0_calibrated + int4 table → ORT", GEMMA3,
          "calibrated opt-RTN int4 sym g32, table int4 → ONNX MatMulNBits, codes carried",
          (Source(ORT_GEMMA_ANALOGY, "runtimes", ORT_GEMMA_C, ("quality",)),
           Source("benchmarks/deploy_runtimes_gemma3_onnx.json", "runtimes", ORT_GEMMA_C, ("speed",))),
          route="c", task="analogy"),
    Point("slimkit_runtime", "executorch 8da4w", GEMMA3,
          "slimkit executorch exporter: torchao 8da4w g32 + int8 embedding + 8da8w lm_head of fp32",
          (Source(ET_GEMMA_ANALOGY, "runtimes", ET_GEMMA_A, ("quality",)),
           Source("benchmarks/deploy_executorch_gemma3.json", "runtimes", ET_GEMMA_A, ("speed",))),
          route="b", task="analogy"),
    Point("slimkit_runtime", "AWQ, gptq grid → ExecuTorch", GEMMA3,
          "autoround AWQ int4 g32 on the gptq grid, table per row → .pte, every code carried",
          (Source(ET_GEMMA_ANALOGY, "runtimes", ET_GEMMA_C, ("quality",)),
           Source("benchmarks/deploy_executorch_gemma3_gptq.json", "runtimes", ET_GEMMA_C, ("speed",))),
          route="c", task="analogy"),
]

#: Committed JSONs with matching rows that are deliberately not points, and why (written into the JSON).
NOT_DRAWN = [
    (("benchmarks/deploy_runtimes_smollm2_onnx_ov8.json: ov-nncf-int8 (a); deploy_runtimes_smollm2_openvino.json: "
     "all OpenVINO rows"), ("explicit-KV OpenVINO export, superseded by the stateful export "
     "(deploy_runtimes_smollm2_openvino_stateful*.json); the (a) rows there also ran at f32 under a bf16 label")),
    ("benchmarks/deploy_runtimes_smollm2_openvino_stateful.json: ov-nncf-int8 bf16 (a), slimkit openvino int8 bf16 (b)",
     "the same exports re-measured with 5 processes at load 2-3 in ..._stateful_rerun.json, which is used"),
    ("benchmarks/int4_calibrated_smollm2_sr5.json", ("SignRound at 5 iterations x 4 windows, superseded by 20 x 16 "
     "at 1,000 sentences (int4_calibrated_smollm2_sr20_1000.json)")),
    ("benchmarks/deploy_carry_smollm2*.json: 're-quantized' rows", ("a counterfactual route (slimkit's artifact "
     "dequantized and re-quantized by the runtime's tool) that the exporters no longer take; deploy_carry.md")),
    ("benchmarks/deploy_carry_smollm2*.json: autoround int4 table int4 (PyTorch)", ("the same artifact as "
     "int4_calibrated_smollm2_rtn/sr20 (same perplexity); drawn from those files")),
    ("benchmarks/case_study_frontier.json, case_study_explore*.json", ("speed and quality of the pruning cuts were "
     "measured on different models (cuts timed without recovery); no row has both")),
    ("benchmarks/quantization_files/smollm2.json: 'quanto w4 + int8 blocks 0,29'", ("hand-picked equal-bits "
     "control, within noise of the budget row; left off to keep the figure readable")),
    ("benchmarks/deploy_carry_gemma3.json, qat_*.json, structured_*.json", "no sentiment measured"),
    (("deployment:gguf of case_study_mobile_smollm2_taskmix_gptq, _pruned, _pruned_mix120, _pruned_recovered, "
      "_pruned_recovered_noqat"), ("scored by transformers' GGUF loader (llama-cpp-python was not on the run's "
                                   "path): PyTorch's speed and the PyTorch artifact's quality, not llama.cpp's")),
    ("deployment:openvino of case_study_mobile_smollm2_pruned_recovered_noqat", ("timed under the test suite's "
     "load; the same architecture and size as the other pruned OpenVINO points")),
    ("case_study_mobile_smollm2_pruned_mix120", ("the pruned recipe with 120 prompts in the mix instead of 360: "
     "the same size and speed as _pruned, sentiment 95-96% (case_study_mobile.md, session 13)")),
]


# --------------------------------------------------------------------------------------------- readers


def _load(path: str) -> dict:
    full = ROOT / path
    if not full.is_file():
        raise SourceError(f"listed JSON {path} does not exist")
    with open(full) as f:
        return json.load(f)


def _need(mapping, key, where):
    if not isinstance(mapping, dict) or key not in mapping or mapping[key] is None:
        raise SourceError(f"{where}: field {key!r} is missing")
    return mapping[key]


def _row(rows, name_key, name, path):
    matches = [r for r in rows if r.get(name_key) == name]
    if len(matches) != 1:
        names = [r.get(name_key) for r in rows]
        raise SourceError(f"{path}: expected exactly one row with {name_key}={name!r}, found {len(matches)} "
                          f"(rows: {names})")
    return matches[0]


def _task_acc(tasks, task, where):
    if task is None:  # a source that gives speed only: its task scores are not read
        return None
    scores = _need(tasks, task, where)
    for key in ("final", "acc"):
        if key in scores:
            return scores[key]
    raise SourceError(f"{where}: tasks.{task} has neither 'final' nor 'acc'")


def _processes_speed(processes):
    return ([p["prefill_speedup"] for p in processes], [p["decode_speedup"] for p in processes])


def read_source(src: Source, task: str | None = "sentiment") -> dict:
    """The quantities one source gives: measured values with the baseline they are normalised against.

    ``task`` names the task whose accuracy is read; ``None`` for a source that gives speed only."""
    d = _load(src.path)
    where = f"{src.path} [{src.row}]"
    if task not in ("sentiment", None) and src.kind in ("int4", "quantization", "speed"):
        raise SourceError(f"{where}: a {src.kind!r} JSON scores sentiment only, not {task!r}")
    out: dict = {"path": src.path, "row": src.row if isinstance(src.row, str) else json.dumps(src.row)}
    if src.kind == "deploy":  # benchmarks/deploy.py
        base = _row(d["rows"], "route", "reference", src.path)
        r = _row(d["rows"], "label", src.row, src.path)
        out.update(size=_need(r, "size_bytes", where), base_size=base["size_bytes"],
                   acc=_task_acc(r["tasks"], task, where), base_acc=_task_acc(base["tasks"], task, src.path),
                   samples=_need(d, "task_samples", src.path), ppl=r["perplexity"], base_ppl=base["perplexity"],
                   prefill=_need(r, "prefill_speedup", where), decode=_need(r, "decode_speedup", where),
                   per_process=_processes_speed(r["processes"]), load_average=r.get("load_average"),
                   condition=f"{len(r['processes'])} fresh processes, each timing PyTorch fp32 and the export "
                             f"alternately ({d['repeats']} rounds), medians; 1 thread")
    elif src.kind == "runtimes":  # benchmarks/deploy_runtimes.py, benchmarks/deploy_executorch.py
        base = _need(d, "baseline_fp32_pytorch", src.path)
        r = _row(d["rows"], "row", src.row, src.path)
        speed = _need(r, "speed", where)
        base_acc = ((base.get("sentiment_accuracy") if task == "sentiment" else None)
                    or _task_acc(base.get("tasks", {}), task, src.path))
        out.update(size=_need(r, "size_bytes", where), base_size=base["size_bytes"],
                   acc=_task_acc(r["tasks"], task, where), base_acc=base_acc,
                   samples=_need(d, "task_samples", src.path), ppl=r["perplexity"], base_ppl=base["perplexity"],
                   prefill=_need(speed, "prefill_speedup", where), decode=_need(speed, "decode_speedup", where),
                   per_process=_processes_speed(speed["processes"]), load_average=speed.get("load_average"),
                   condition=f"{len(speed['processes'])} fresh processes, each timing PyTorch fp32 and the "
                             f"export alternately ({d['timing']['repeats']} rounds), medians; 1 thread")
    elif src.kind == "carry":  # benchmarks/deploy_carry.py, deploy_carry_onnx.py (no timing)
        base = _row(d["rows"], "label", "PyTorch fp32", src.path)
        r = _row(d["rows"], "label", src.row, src.path)
        out.update(size=r["size_bytes"], base_size=base["size_bytes"], acc=_task_acc(r["tasks"], task, where),
                   base_acc=_task_acc(base["tasks"], task, src.path), samples=_need(d, "task_samples", src.path),
                   ppl=r["perplexity"], base_ppl=base["perplexity"],
                   load_average=d.get("load_average_start_end"))
    elif src.kind == "int4":  # benchmarks/int4_calibrated.py
        matches = [p for p in d["points"] if all(p.get(k) == v for k, v in src.row.items())]
        if len(matches) != 1:
            raise SourceError(f"{where}: expected exactly one matching point, found {len(matches)}")
        p = matches[0]
        base = d.get("fp32")
        if src.baseline_from:
            other = _load(src.baseline_from)
            for key in ("eval_slice", "task"):
                if other.get(key) != d.get(key):
                    raise SourceError(f"{src.path}: {key} differs from baseline_from {src.baseline_from}")
            base = other.get("fp32")
        if not base:
            raise SourceError(f"{src.path}: no fp32 baseline in the file (give baseline_from)")
        out.update(size=p["size_bytes"], base_size=base["size_bytes"], acc=p["sentiment_accuracy"],
                   base_acc=base["sentiment_accuracy"], samples=_need(d["args"], "task_samples", src.path),
                   ppl=p["perplexity"], base_ppl=base["perplexity"], load_average=p.get("load_average"))
    elif src.kind == "quantization":  # benchmarks/quantization.py
        base = _row(d["rows"], "label", "fp32", src.path)
        r = _row(d["rows"], "label", src.row, src.path)
        out.update(size=r["size_bytes"], base_size=base["size_bytes"], acc=r.get("sentiment_accuracy"),
                   base_acc=base.get("sentiment_accuracy"), samples=r.get("sentiment_samples"),
                   ppl=r.get("perplexity"), base_ppl=base.get("perplexity"),
                   prefill=r.get("prefill_speedup"), decode=r.get("decode_speedup"),
                   load_average=r.get("load_average_before"),
                   condition=f"in the benchmark process after evaluating, fp32 and the model alternated "
                             f"({d['args']['repeats']} rounds), medians; 1 thread")
    elif src.kind == "speed":  # benchmarks/speed.py
        arms = d["arms"]
        base, r = _need(arms, "fp32", src.path), _need(arms, src.row, src.path)
        out.update(size=r["artifact_mb"] * 1e6, base_size=base["artifact_mb"] * 1e6, acc=r["sentiment_accuracy"],
                   base_acc=base["sentiment_accuracy"], samples=d["sentiment_samples"], ppl=r["perplexity"],
                   base_ppl=base["perplexity"], prefill=r["prefill_speedup"], decode=r["decode_speedup"],
                   load_average=d.get("load_average"),
                   condition=f"in the benchmark process after evaluating ({d['repeats']} rounds); 1 thread")
    elif src.kind == "speed_deploy":  # benchmarks/speed_deploy.py (speed only)
        summary = _need(d, "summary", src.path)
        out.update(prefill=summary["prefill_speedup"]["median"], decode=summary["decode_speedup"]["median"],
                   per_process=_processes_speed(d["processes"]), load_average=d.get("load_average_end"),
                   condition=f"serving: {len(d['processes'])} fresh processes that load only fp32 and the "
                             f"artifact, alternated ({d['repeats']} rounds), medians; 1 thread")
    elif src.kind == "report":  # a pipeline run's report.json
        base = _need(d, "baseline", src.path)
        base_acc = (base.get("tasks", {}).get(task, {}).get("acc")
                    or (base.get("sentiment_accuracy") if task == "sentiment" else None))
        samples = (d.get("tasks") or {}).get(task, {}).get("samples") or src.samples
        if samples is None and task is not None:
            raise SourceError(f"{src.path}: no {task} sample count in the report; declare it with a note")
        if src.row == "final":
            final = _need(d, "final", src.path)
            acc = final.get("tasks", {}).get(task, {}).get(
                "acc", final.get("sentiment_accuracy") if task == "sentiment" else None)
            out.update(size=final["size_bytes"], base_size=base["size_bytes"], acc=acc, base_acc=base_acc,
                       samples=samples, ppl=final["perplexity"], base_ppl=base["perplexity"])
            timing = d.get("timing")
            if timing and timing.get("condition") == "serving":
                out.update(prefill=timing["prefill_speedup"]["median"], decode=timing["decode_speedup"]["median"],
                           condition=f"serving: {timing['processes']} rounds of fresh processes, one model each "
                                     f"({timing['repeats']} repeats), medians; {timing['threads']} thread")
            else:
                ratios = _need(d, "ratios", src.path)
                out.update(prefill=_need(ratios, "prefill_speed", src.path), decode=_need(ratios, "speed", src.path),
                           condition="in the run's own process, fp32 and the artifact alternated; 1 thread")
        elif str(src.row).startswith("deployment:"):
            exporter = src.row.split(":", 1)[1]
            dep = _row(_need(d, "deployments", src.path), "exporter", exporter, src.path)
            out.update(size=dep["size_bytes"], base_size=base["size_bytes"], acc=_task_acc(dep["tasks"], task, where),
                       base_acc=base_acc, samples=samples, ppl=dep["perplexity"], base_ppl=base["perplexity"],
                       prefill=dep["prefill_speedup"], decode=dep["decode_speedup"],
                       per_process=_processes_speed(dep["processes"]), load_average=dep.get("load_average"),
                       condition=f"{len(dep['processes'])} fresh processes, each timing PyTorch fp32 and the "
                                 f"export alternately, medians; {dep.get('threads', 1)} thread")
        else:
            raise SourceError(f"{where}: unknown report row (use 'final' or 'deployment:<exporter>')")
    else:
        raise SourceError(f"{src.path}: unknown kind {src.kind!r}")
    if src.samples_note:
        out["samples_note"] = src.samples_note
    return out


# --------------------------------------------------------------------------------------------- normalising


def _ratio(num, den):
    return None if num is None or den in (None, 0) else num / den


def build_point(point: Point) -> dict:
    """One point of the frontier: its quantities normalised against each source JSON's own fp32 baseline."""
    taken: dict = {}
    record = {"family": point.family, "family_label": FAMILIES[point.family], "label": point.label,
              "model": point.model, "task": point.task, "scheme": point.scheme, "route": point.route or None,
              "sources": []}
    for src in point.sources:
        take = src.take or (("quality",) if src.kind in UNTIMED_KINDS else ("quality", "speed"))
        data = read_source(src, point.task if set(take) & {"quality", "perplexity"} else None)
        for part in take:
            if part in taken:
                raise SourceError(f"{point.label}: {part} taken from two sources")
            taken[part] = data
        record["sources"].append({"path": src.path, "row": data["row"], "kind": src.kind, "takes": list(take)})
    quality = taken.get("quality")
    if quality is None:
        raise SourceError(f"{point.label}: no source gives size and {point.task}")
    for key in ("size", "base_size", "acc", "base_acc", "samples"):
        if quality.get(key) is None:
            raise SourceError(f"{quality['path']} [{quality['row']}]: {key} missing for point {point.label!r}")
    acc, base_acc, n = quality["acc"], quality["base_acc"], quality["samples"]
    perplexity = taken.get("perplexity", quality)
    retained = acc / base_acc
    record.update(
        source=quality["path"], row=quality["row"],
        size_bytes=quality["size"], fp32_size_bytes=quality["base_size"],
        size_ratio=quality["base_size"] / quality["size"],
        task_accuracy=acc, fp32_task_accuracy=base_acc, task_samples=n, task_retained=retained,
        # one binomial standard error of the point's accuracy, over fp32's accuracy (fp32's own error ignored)
        task_retained_se=math.sqrt(acc * (1 - acc) / n) / base_acc,
        perplexity=perplexity.get("ppl"), fp32_perplexity=perplexity.get("base_ppl"),
        perplexity_source=perplexity["path"] if perplexity.get("ppl") is not None else None,
        perplexity_ratio=_ratio(perplexity.get("ppl"), perplexity.get("base_ppl")),
        load_average=quality.get("load_average"),
    )
    if quality.get("samples_note"):
        record["task_samples_note"] = quality["samples_note"]
    speed = taken.get("speed")
    if speed is not None:
        for key in ("prefill", "decode"):
            if speed.get(key) is None:
                raise SourceError(f"{speed['path']} [{speed['row']}]: {key} speedup missing for {point.label!r}")
        record.update(speed_source=speed["path"], prefill_speedup=speed["prefill"], decode_speedup=speed["decode"],
                      speed_condition=speed["condition"], speed_load_average=speed.get("load_average"))
        if speed.get("per_process"):
            record["prefill_speedup_per_process"], record["decode_speedup_per_process"] = speed["per_process"]
    else:
        record.update(speed_source=None, prefill_speedup=None, decode_speedup=None, speed_condition=None)
    record["meets"] = {
        "size_ge_8x": record["size_ratio"] >= TARGET_SIZE,
        "decode_ge_8x": None if speed is None else record["decode_speedup"] >= TARGET_DECODE,
        "prefill_ge_3x": None if speed is None else record["prefill_speedup"] >= TARGET_PREFILL,
        "task_ge_97pct": retained >= TARGET_RETAINED,
        "perplexity_within_10pct": None if record["perplexity_ratio"] is None else record["perplexity_ratio"] <= 1.10,
    }
    if point.note:
        record["note"] = point.note
    return record


def pareto_front(points: list[dict], x_key: str) -> list[dict]:
    """The points no other point of the list beats on both ``x_key`` and task accuracy retained (higher is better)."""
    usable = [p for p in points if p.get(x_key) is not None]
    front = [p for p in usable
             if not any(q[x_key] >= p[x_key] and q["task_retained"] >= p["task_retained"]
                        and (q[x_key] > p[x_key] or q["task_retained"] > p["task_retained"])
                        for q in usable)]
    return sorted(front, key=lambda p: p[x_key])


# --------------------------------------------------------------------------------------------- drawing

STYLE = {
    "pytorch": {"color": "#1f77b4", "marker": "o"},
    "runtime": {"color": "#7f7f7f", "marker": "s"},
    "slimkit_runtime": {"color": "#d62728", "marker": "D"},
}


def _place_labels(ax, items, renderer) -> None:
    """Put each (label, x, y, colour) next to its marker where it overlaps no marker or earlier label."""
    import itertools

    to_display = ax.transData.transform
    markers = [to_display((x, y)) for _, x, y, _ in items]
    placed = []
    candidates = [(dx, dy) for r in (5, 11, 18) for dx, dy in
                  itertools.product((r, -r, 0), (r * 0.6, -r * 0.6 - 6, -3))]
    for label, x, y, colour in items:
        best, best_cost = None, None
        for dx, dy in candidates:
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=6.5,
                               color=colour, ha="left" if dx >= 0 else "right")
            box = text.get_window_extent(renderer).expanded(1.04, 1.1)
            cost = sum(_overlap(box, b) for b in placed)
            cost += sum(25.0 for mx, my in markers if box.x0 - 3 <= mx <= box.x1 + 3 and box.y0 - 3 <= my <= box.y1 + 3)
            axes_box = ax.get_window_extent(renderer)
            if box.x0 < axes_box.x0 or box.x1 > axes_box.x1 or box.y0 < axes_box.y0 or box.y1 > axes_box.y1:
                cost += 1e6
            if best_cost is None or cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (text, box), cost
            else:
                text.remove()
            if cost == 0:
                break
        placed.append(best[1])


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def draw(points: list[dict], fronts: dict, png: Path, title: str) -> None:
    """Three panels (size, decode speed, prefill speed) × task accuracy retained; markers per family, each family's front as steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, axes = plt.subplots(1, 3, figsize=(26, 10))
    renderer = fig.canvas.get_renderer()
    panels = [("size_ratio", "size reduction vs fp32 (×, log scale)", TARGET_SIZE),
              ("decode_speedup", "decode speedup vs fp32 PyTorch, 1 thread (×, log scale)", TARGET_DECODE),
              ("prefill_speedup", "prefill speedup vs fp32 PyTorch, 1 thread (×, log scale)", TARGET_PREFILL)]
    ys = [p["task_retained"] for p in points]
    task = points[0]["task"]
    y_lo, y_hi = min(ys) - 0.06, max(1.06, max(ys) + 0.06)
    for ax, (x_key, x_label, target) in zip(axes, panels):
        usable = [p for p in points if p.get(x_key) is not None]
        x_hi = max(target * 1.5, max(p[x_key] for p in usable) * 1.3)
        x_lo = min(0.8, min(p[x_key] for p in usable) * 0.8)
        ax.set_xscale("log")
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.fill_between([target, x_hi], TARGET_RETAINED, y_hi, color="#2ca02c", alpha=0.12, lw=0)
        ax.text(x_hi / 1.02, y_hi - 0.01, f"target:\n≥{target:g}×, ≥{TARGET_RETAINED:.0%}", ha="right", va="top",
                fontsize=8, color="#2ca02c")
        ax.axhline(1.0, color="k", lw=0.5, ls=":")
        ax.axhline(TARGET_RETAINED, color="#2ca02c", lw=0.6, ls="--")
        ax.axvline(target, color="#2ca02c", lw=0.6, ls="--")
        ax.plot([1.0], [1.0], marker="*", color="k", ms=12, ls="")
        for family, style in STYLE.items():
            fam = [p for p in usable if p["family"] == family]
            front = fronts[family][x_key]
            if front:
                ax.step([p[x_key] for p in front], [p["task_retained"] for p in front], where="pre",
                        color=style["color"], lw=1.4, alpha=0.8)
            for p in fam:
                ax.errorbar(p[x_key], p["task_retained"], yerr=p["task_retained_se"],
                            color=style["color"], alpha=0.3, lw=0.8, capsize=0, zorder=2)
                ax.plot(p[x_key], p["task_retained"], marker=style["marker"], ls="", ms=7, zorder=3,
                        markeredgecolor=style["color"], markeredgewidth=1.4,
                        markerfacecolor="white" if p["route"] == "b" else style["color"])
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{task} accuracy retained (point / its JSON's fp32), bar = ±1 s.e.")
        ax.grid(True, which="both", alpha=0.25)
        ax.set_xticks([t for t in (0.5, 1, 2, 3, 4, 6, 8, 10) if x_lo <= t <= x_hi])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        missing = len(points) - len(usable)
        if missing:
            ax.text(0.01, 0.01, f"{missing} points have no timing in their JSON and are not drawn here",
                    transform=ax.transAxes, fontsize=7, color="0.4")
    fig.suptitle(title, fontsize=10)
    handles = [Line2D([], [], marker=STYLE[f]["marker"], color=STYLE[f]["color"], ls="-", ms=7, label=FAMILIES[f])
               for f in STYLE]
    handles.append(Line2D([], [], marker="*", color="k", ls="", ms=10, label="fp32 PyTorch (each JSON's own)"))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    for ax, (x_key, _, _) in zip(axes, panels):  # labels last: they need the final layout
        items = [("fp32", 1.0, 1.0, "k")] + [
            (p["label"], p[x_key], p["task_retained"], STYLE[p["family"]]["color"])
            for p in points if p.get(x_key) is not None]
        _place_labels(ax, items, renderer)
    fig.savefig(png, dpi=130)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- main


def build(points_spec: list[Point]) -> tuple[list[dict], dict]:
    points = [build_point(p) for p in points_spec]
    fronts = {}
    for family in FAMILIES:
        fam = [p for p in points if p["family"] == family]
        fronts[family] = {x: pareto_front(fam, x) for x in ("size_ratio", "decode_speedup", "prefill_speedup")}
    return points, fronts


def _front_labels(fronts: dict) -> dict:
    return {f: {x: [p["label"] for p in pts] for x, pts in per.items()} for f, per in fronts.items()}


def _timed(point: dict) -> str:
    """A short name for the point's timing condition (the full one is in the JSON)."""
    condition = point.get("speed_condition")
    if condition is None:
        return "–"
    if condition.startswith("serving"):
        return "serving"
    if condition.startswith("in "):
        return "in-process"
    return "fresh, fp32+export"


def table(points: list[dict]) -> str:
    """A Markdown table of the points (the one in frontier_families.md)."""

    def fmt(value, spec):
        return "–" if value is None else format(value, spec)

    def task_key(p, key):  # files written before the task column name the sentiment fields after it
        return p[f"task_{key}"] if "task" in p else p[f"sentiment_{key}"]

    task = points[0].get("task", "sentiment") if points else "sentiment"
    lines = [(f"| family | route | point | scheme | size × | {task} (fp32) | n | retained ± s.e. | ppl × | "
              "prefill × | decode × | timed | source |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        fp32_accuracy = p["fp32_task_accuracy"] if "task" in p else p["fp32_sentiment_accuracy"]
        src = p["source"].removeprefix("benchmarks/")
        if p["speed_source"] and p["speed_source"] != p["source"]:
            src += "; speed: " + p["speed_source"].removeprefix("benchmarks/")
        lines.append(
            f"| {p['family']} | {p['route'] or '–'} | {p['label']} | {p['scheme']} | {p['size_ratio']:.2f} | "
            f"{task_key(p, 'accuracy'):.3f} ({fp32_accuracy:.3f}) | {task_key(p, 'samples')} | "
            f"{task_key(p, 'retained'):.1%} ± {task_key(p, 'retained_se'):.1%} | {fmt(p['perplexity_ratio'], '.3f')} | "
            f"{fmt(p['prefill_speedup'], '.2f')} | {fmt(p['decode_speedup'], '.2f')} | {_timed(p)} | {src} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/frontier_families.json")
    parser.add_argument("--png", default="benchmarks/frontier_families.png")
    parser.add_argument("--png-gemma3", default="benchmarks/frontier_families_gemma3.png")
    parser.add_argument("--png-gemma3-analogy", default="benchmarks/frontier_families_gemma3_analogy.png")
    parser.add_argument("--table", action="store_true", help="print the Markdown tables of --out and exit")
    args = parser.parse_args(argv)
    if args.table:
        with open(ROOT / args.out) as f:
            saved = json.load(f)
        for model, section in saved["models"].items():
            print(f"\n{model}\n\n{table(section['points'])}")
        return 0
    outputs = (args.out, args.png, args.png_gemma3, args.png_gemma3_analogy)
    written = [path for path in outputs if (ROOT / path).exists()]
    if written:  # documents cite the files an earlier run wrote: a new run writes new ones
        parser.error(f"{', '.join(written)} already exist(s); give new --out/--png/--png-gemma3/--png-gemma3-analogy "
                     "paths")
    models = {}
    for model, spec, png, title in (
        (SMOLLM2, SMOLLM2_POINTS, args.png,
         ("SmolLM2-135M: what each route reaches — every point from a committed benchmark JSON, normalised to that "
         "JSON's fp32 PyTorch baseline (sentiment on 100-1,000 sentences, see n)")),
        (GEMMA3, GEMMA3_POINTS, args.png_gemma3,
         ("Gemma-3-270M: the same families — its fp32 2-shot sentiment is near or below chance (0.43-0.645), so "
         "'retained' says little here")),
        (f"{GEMMA3}:analogy", GEMMA3_ANALOGY_POINTS, args.png_gemma3_analogy,
         ("Gemma-3-270M on the task it can do: the built-in analogy task (700 analogies, fp32 0.940; chance 0.25) — "
          "quality from session 14's JSONs, speed from the earlier quiet timings of the same recipes")),
    ):
        points, fronts = build(spec)
        draw(points, fronts, ROOT / png, title)
        models[model] = {"figure": png, "points": points, "pareto_fronts": _front_labels(fronts)}
    result = {
        "command": " ".join(["python benchmarks/frontier_families.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "what": "issue 15's frontier: size, decode and prefill speed against task accuracy retained (sentiment; "
                "analogy for Gemma-3's second figure), three families of points, "
                "each read from a committed benchmark JSON and normalised to that JSON's own fp32 baseline; "
                "no model was run by this script",
        "families": FAMILIES,
        "target": {"size_ratio": TARGET_SIZE, "decode_speedup": TARGET_DECODE, "prefill_speedup": TARGET_PREFILL,
                   "task_retained": TARGET_RETAINED, "perplexity_ratio": 1.10},
        "task_retained_se": "one binomial standard error of the point's accuracy, sqrt(a(1-a)/n), divided "
                                 "by the fp32 accuracy (the fp32 accuracy's own error is not included)",
        "machine_note": "the source JSONs were measured on a shared 2-core machine; load averages are copied from "
                        "them where they recorded one; speed ratios carry +-10-25%",
        "not_drawn": [{"what": w, "why": y} for w, y in NOT_DRAWN],
        "models": models,
        "python": platform.python_version(),
        "load_average_when_drawn": list(os.getloadavg()),
    }
    with open(ROOT / args.out, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for model, section in models.items():
        print(f"\n{model}\n\n{table(section['points'])}")
        for family, per in section["pareto_fronts"].items():
            print(f"  front {family}: size {per['size_ratio']} | decode {per['decode_speedup']} | "
                  f"prefill {per['prefill_speedup']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
