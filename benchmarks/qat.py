"""Does quantization-aware distillation recover what post-training int4 loses? (SmolLM2-135M, Gemma-3-270M)

Arms (all end in the same real export: optimum-quanto int4 weights, lm_head/embedding kept fp32):
  ptq       quanto int4 on the original weights (round to nearest)
  qat_kd    `kd` distiller with qat_bits=4 (quanto fake-quant + STE), teacher = fp32 original, then int4
  qat_ce    same steps, qat_bits=4, alpha=0 (hard-label CE only: no teacher), then int4 (control)

Perplexity on the held-out tail of the Wikipedia sample (never trained on); training windows from
the head, validation from the end of the training slice. threads=1.

    OMP_NUM_THREADS=1 python benchmarks/qat.py --steps 60 --out benchmarks/qat_smollm2.json
    OMP_NUM_THREADS=1 python benchmarks/qat.py --model gemma3-270m --ppl-batch 1 --out benchmarks/qat_gemma3.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from pathlib import Path

import torch

from slimkit.data import build_splits
from slimkit.evaluation import perplexity
from slimkit.models import load_model
from slimkit.core.state import PipelineState


def int4(model: torch.nn.Module, data) -> torch.nn.Module:
    from slimkit_quanto import QuantoConfig, QuantoQuantizer

    state = PipelineState(model, None, data, None)
    QuantoQuantizer(QuantoConfig(bits=4)).apply(state)
    return state.model


def group_sizes(model: torch.nn.Module) -> dict[str, int]:
    from optimum.quanto.nn import QLinear

    return sorted({(m.in_features, m.weight_group_size) for m in model.modules() if isinstance(m, QLinear)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ppl-batch", type=int, default=4, help="perplexity batch (1 for Gemma's 262k vocabulary)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--train-tokens", type=int, default=65536)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--arms", default="ptq,qat_kd,qat_ce")
    ap.add_argument("--eval-every", type=int, default=0, help="validation evaluations during training (0: none)")
    ap.add_argument("--out", default="benchmarks/qat_smollm2.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from slimkit_kd import KDConfig, KDDistiller

    loaded = load_model(args.model)
    data = build_splits(loaded.tokenizer, seq_len=args.seq_len, train_tokens=args.train_tokens,
                        calibration_samples=4, eval_tokens=args.eval_tokens)
    reference = loaded.model.eval().requires_grad_(False)
    results: dict = {"model": loaded.provenance, "threads": 1,
                     "eval_slice": data.info["eval"], "train_slice": data.info["train"], "args": vars(args), "arms": {}}
    t = time.perf_counter()
    results["fp32_perplexity"] = perplexity(reference, data.eval, args.ppl_batch, desc="ppl fp32")
    print("fp32", results["fp32_perplexity"], f"{time.perf_counter() - t:.0f}s", flush=True)
    for arm in args.arms.split(","):
        model = copy.deepcopy(reference)
        start = time.perf_counter()
        metrics = {}
        if arm != "ptq":
            state = PipelineState(model, loaded.tokenizer, data, reference, work_dir=Path("/tmp/qat-bench"))
            alpha = 1.0 if arm == "qat_kd" else 0.0
            stage = KDDistiller(KDConfig(qat_bits=4, alpha=alpha, temperature=args.temperature, max_steps=args.steps,
                                         lr=args.lr, batch_size=args.batch_size, eval_every=args.eval_every,
                                         val_fraction=0.02))
            metrics = stage.apply(state)
            model = state.model
            metrics["float_perplexity_after_training"] = perplexity(model, data.eval, args.ppl_batch, desc=f"ppl {arm} float")
        train_s = time.perf_counter() - start
        quantized = int4(model, data)
        ppl = perplexity(quantized, data.eval, args.ppl_batch, desc=f"ppl {arm} int4")
        results["arms"][arm] = {"int4_perplexity": ppl, "ratio_to_fp32": ppl / results["fp32_perplexity"],
                                "train_seconds": round(train_s, 1),
                                "group_sizes(in_features, group)": group_sizes(quantized),
                                **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str, type(None)))}}
        print(arm, json.dumps(results["arms"][arm]), flush=True)
        del model, quantized  # one student at a time: this machine has little memory to spare
        gc.collect()
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
