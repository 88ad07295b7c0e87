"""Case study, last stage swapped: rebuild the distilled student of a finished (or interrupted)
`slimkit experiment=case_study` run from its latest checkpoint, finish it with several quantizers,
and measure each artifact against the fp32 original: size on disk, held-out perplexity (the run's
own eval slice) and latency (`slimkit.evaluation.latency`: all models alternated in one process,
threads=1, medians).

    OMP_NUM_THREADS=1 python benchmarks/case_study.py --run /tmp/cs_bounded --quantizers none,quanto8,int8 \
        --out benchmarks/case_study_bounded.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from slimkit.core.artifact import directory_size
from slimkit.data import build_splits
from slimkit.evaluation import latency, perplexity
from slimkit.models import load_model
from slimkit.core.state import PipelineState
from slimkit.toolkit.training import checkpoints


def quantizers():
    from slimkit_quanto import QuantoConfig, QuantoQuantizer

    table = {"quanto8": lambda: QuantoQuantizer(QuantoConfig(bits=8)),
             "quanto4": lambda: QuantoQuantizer(QuantoConfig(bits=4))}
    try:
        from slimkit_int8 import Int8Config, Int8Quantizer

        table["int8"] = lambda: Int8Quantizer(Int8Config())
    except ImportError:
        pass
    return table


def size_of(stage, model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        (stage.save if stage else lambda m, d: m.save_pretrained(d, safe_serialization=True))(model, Path(tmp))
        return directory_size(tmp)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="hydra.run.dir of a case study run")
    ap.add_argument("--quantizers", default="none,quanto8,int8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eval-windows", type=int, default=0, help="use only the first N windows of the eval slice")
    ap.add_argument("--out", default="benchmarks/case_study_bounded.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from slimkit_kd import drop_layers
    from slimkit_kd.student import decoder_layers, resolve_layers
    from safetensors.torch import load_file

    run = Path(args.run)
    cfg = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"), resolve=True)
    loaded = load_model(cfg["model"]["name"], cfg["model"].get("path"))
    data = build_splits(loaded.tokenizer, **cfg["data"])
    if args.eval_windows:
        data.eval = data.eval[: args.eval_windows]
        data.info["eval"] = {**data.info["eval"], "windows_used": args.eval_windows}
    original = loaded.model.eval()
    keep = resolve_layers(cfg["distiller"]["student_layers"], len(decoder_layers(original)[1]))
    student = drop_layers(original, keep)
    ckpt = checkpoints(run / "checkpoints")[-1]
    weights = load_file(str(ckpt / "model.safetensors"))
    missing, unexpected = student.load_state_dict(weights, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    student.tie_weights()
    student.eval()
    trainer = json.loads((ckpt / "trainer.json").read_text())

    results = {"run": str(run), "checkpoint": ckpt.name, "distill_steps": trainer["step"],
               "model": loaded.provenance, "eval_slice": data.info["eval"], "threads": 1, "rows": {}}
    models = {"fp32 original": original}
    base_ppl = perplexity(original, data.eval, 4, desc="ppl original")
    results["rows"]["fp32 original"] = {"perplexity": base_ppl, "size_bytes": size_of(None, original)}
    print("original", results["rows"]["fp32 original"], flush=True)
    table = quantizers()
    for name in args.quantizers.split(","):
        model = copy.deepcopy(student)
        stage = None
        if name != "none":
            stage = table[name]()
            state = PipelineState(model, loaded.tokenizer, data, original, work_dir=run)
            stage.apply(state)
            model = state.model
        label = f"student {len(keep)}L + {name}"
        results["rows"][label] = {"perplexity": perplexity(model, data.eval, 4, desc=f"ppl {label}"),
                                  "size_bytes": size_of(stage, model)}
        print(label, results["rows"][label], flush=True)
        models[label] = model
        Path(args.out).write_text(json.dumps(results, indent=1))
    prompt = data.eval[:1, :128]
    timed = latency(models, prompt, threads=1, repeats=args.repeats, decode_tokens=32)
    base = timed["fp32 original"]
    for label, t in timed.items():
        row = results["rows"][label]
        row.update(t)
        row["size_ratio"] = results["rows"]["fp32 original"]["size_bytes"] / row["size_bytes"]
        row["decode_speedup"] = t["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        row["prefill_speedup"] = base["prefill_ms"] / t["prefill_ms"]
        row["perplexity_ratio"] = row["perplexity"] / base_ppl
        print(label, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
