"""The model-family x backend compatibility matrix: tiny random models of each common family, one
cell per (family, backend), run through the pipeline's own steps.

A cell either **works** end to end (``resolve_stages`` -> the pipeline's pre-load model check on the
folder's ``config.json`` -> ``load_model`` -> ``apply`` -> ``save_artifact`` -> ``load`` with the same
logits) or is **refused** before any weights load: the pre-load check raises a slimkit
:class:`~slimkit.core.errors.ConfigError` naming the model type, the backend and what is supported.
``EXPECTED`` declares each cell's outcome; ``tests/test_compat_matrix.py`` asserts it, and
``scripts/compat_matrix.py`` writes ``benchmarks/compat_matrix.{json,md}`` (the README's table).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import torch

from slimkit.core.errors import ConfigError, SlimkitError

VOCAB = 512
SEQ = 32

#: the families of the matrix: tiny transformers configs (2 layers, hidden 64, 4 query heads of 16) built in the test
FAMILIES: dict[str, Callable[[], Any]] = {}


def _family(name: str):
    def register(fn):
        FAMILIES[name] = fn
        return fn
    return register


_COMMON = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
_GQA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, **_COMMON)


@_family("Llama")
def _llama():
    from transformers import LlamaConfig
    return LlamaConfig(tie_word_embeddings=True, **_GQA)


@_family("Qwen2")
def _qwen2():
    from transformers import Qwen2Config
    return Qwen2Config(tie_word_embeddings=True, **_GQA)


@_family("Qwen3")
def _qwen3():
    from transformers import Qwen3Config
    return Qwen3Config(head_dim=16, **_GQA)


@_family("Mistral")
def _mistral():
    from transformers import MistralConfig
    return MistralConfig(**_GQA)


@_family("Gemma-3")
def _gemma3():
    from transformers import Gemma3TextConfig
    return Gemma3TextConfig(head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                            layer_types=["sliding_attention", "full_attention"], **_GQA)


@_family("Phi-3")
def _phi3():
    from transformers import Phi3Config
    return Phi3Config(**_GQA)


@_family("GPT-2")
def _gpt2():
    from transformers import GPT2Config
    return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=256, **_COMMON)


@_family("OPT")
def _opt():
    from transformers import OPTConfig
    return OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=64,
                     max_position_embeddings=256, **_COMMON)


@_family("GPT-NeoX")
def _gpt_neox():
    from transformers import GPTNeoXConfig
    return GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=256, **_COMMON)


@_family("BLOOM")
def _bloom():  # a family the layout table does not describe: shows where the table is needed
    from transformers import BloomConfig
    return BloomConfig(hidden_size=64, n_layer=2, n_head=4, **_COMMON)


@dataclasses.dataclass(frozen=True)
class Backend:
    """One matrix column: a stage kind, a backend and the settings the cell runs it with."""

    kind: str
    name: str
    settings: dict[str, Any]
    note: str = ""


#: matrix columns (small settings so every cell runs in about a second)
BACKENDS: dict[str, Backend] = {
    "magnitude": Backend("pruner", "magnitude", {"sparsity": 0.5}),
    "wanda": Backend("pruner", "wanda", {"sparsity": 0.5}),
    "taylor": Backend("pruner", "taylor", {"sparsity": 0.5}),
    "torch_pruning": Backend("pruner", "torch_pruning", {"sparsity": 0.3}, "MLP channels"),
    "torch_pruning heads": Backend("pruner", "torch_pruning", {"sparsity": 0.3, "heads_sparsity": 0.5},
                                   "MLP channels + attention heads"),
    "kd": Backend("distiller", "kd", {"max_steps": 2, "batch_size": 4, "eval_every": 0, "val_fraction": 0.0}),
    "kd QAT": Backend("distiller", "kd", {"max_steps": 2, "batch_size": 4, "eval_every": 0, "val_fraction": 0.0,
                                          "qat_bits": 4}, "quantization-aware (quanto int4)"),
    "quanto": Backend("quantizer", "quanto", {"bits": 4}),
    "bnb": Backend("quantizer", "bnb", {"bits": 4, "blocksize": 32}),  # CPU 4-bit needs in_features % blocksize == 0
    "int8": Backend("quantizer", "int8", {}, "SmoothQuant + int8"),
}

WORKS = "works"
#: cells refused before the weights load, with the config key the error names; every other cell works
REFUSED: dict[tuple[str, str], str] = {
    **{(f, "torch_pruning heads"): "pruner.heads_sparsity" for f in ("GPT-2", "OPT", "GPT-NeoX")},
    ("BLOOM", "torch_pruning"): "pruner",
    ("BLOOM", "torch_pruning heads"): "pruner",
    ("BLOOM", "int8"): "quantizer.smooth",
}


def expected(family: str, backend: str) -> str:
    """The declared outcome of a cell: ``"works"`` or ``"refused: <config key>"``."""
    key = REFUSED.get((family, backend))
    return WORKS if key is None else f"refused: {key}"


def tiny_family_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A random-init model of ``family`` (a key of ``FAMILIES``) built from its tiny config, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(FAMILIES[family](), dtype=torch.float32).eval()


def random_windows(n: int = 8, seq_len: int = SEQ, seed: int = 0):
    """``DataSplits`` of random token windows (no corpus to tokenize)."""
    return _data(seed, n, seq_len)


def tiny_folder(family: str, root: Path, seed: int = 0) -> Path:
    """Write a random-init model of ``family`` (built from its tiny config) and the tiny tokenizer into
    ``root/<family>`` (once) and return the folder: what a user's ``model.path`` points at."""
    from slimkit.models import tiny_tokenizer

    folder = Path(root) / family
    if not (folder / "config.json").is_file():
        model = tiny_family_model(family, seed)
        model.save_pretrained(folder, safe_serialization=True)
        tiny_tokenizer(VOCAB).save_pretrained(folder)
    return folder


def _data(seed: int = 0, n: int = 8, seq_len: int = SEQ):
    from slimkit.data import DataSplits

    g = torch.Generator().manual_seed(seed)
    return DataSplits(train=torch.randint(1, VOCAB, (n, seq_len), generator=g),
                      eval=torch.randint(1, VOCAB, (2, seq_len), generator=g), seq_len=seq_len, calibration_samples=4,
                      info={"source": "random token ids"})


def run_cell(family: str, backend: str, root: Path, work: Path) -> dict[str, Any]:
    """Run one cell; returns ``{"outcome": "works" | "refused: <key>" | "failed", ...}`` with the error message,
    the reload logit difference and the seconds it took. Never raises for a slimkit error."""
    from slimkit.core.registry import default_registry
    from slimkit.core.state import PipelineState
    from slimkit.models import load_model
    from slimkit.pipeline.runner import check_model, load, recovery_hook, resolve_stages, save_artifact, stage_record

    spec = BACKENDS[backend]
    folder = tiny_folder(family, root)
    start = time.perf_counter()
    settings = {"pipeline": {"order": [spec.kind]}, spec.kind: {"backend": spec.name, **spec.settings},
                "model": {"path": str(folder)}, "data": {"calibration_samples": 4}, "seed": 0}
    record: dict[str, Any] = {"family": family, "backend": backend}
    registry = default_registry()
    loaded = None
    try:
        stages = resolve_stages(settings, registry)
        check_model(stages, settings["model"])           # the pre-load check: config.json only
        loaded = load_model(path=str(folder))
        model_type = loaded.model.config.model_type
        record["model_type"] = model_type
        state = PipelineState(loaded.model, loaded.tokenizer, _data(), copy.deepcopy(loaded.model).eval(),
                              settings=settings, work_dir=Path(work), seed=0, recover=recovery_hook(stages))
        probe = state.data.eval
        with torch.no_grad():
            before = state.model(input_ids=probe, use_cache=False).logits
        stage, info = stages[0]
        stage.apply(state)
        state.model.eval()
        target = Path(work) / f"{family}-{backend}".replace(" ", "_")
        save_artifact(state, target, True, [stage_record(info, stage)], {"name": family, "path": str(folder)})
        reloaded = load(target, registry)
        with torch.no_grad():
            final = state.model(input_ids=probe, use_cache=False).logits
            again = reloaded(input_ids=probe, use_cache=False).logits
        record.update(outcome=WORKS, reload_max_abs_logit_diff=float((again - final).abs().max()),
                      changed_max_abs_logit_diff=float((final - before).abs().max()))
    except ConfigError as exc:
        record.update(outcome=f"refused: {exc.key}", error=str(exc), weights_loaded=loaded is not None)
    except SlimkitError as exc:
        record.update(outcome="failed", error=f"{type(exc).__name__}: {exc}")
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def cells() -> list[tuple[str, str]]:
    return [(f, b) for f in FAMILIES for b in BACKENDS]


def model_type(family: str) -> str:
    return FAMILIES[family]().model_type


def markdown(results: list[dict[str, Any]]) -> str:
    """The matrix as a markdown table: ✓ works (save → reload, same logits), ✗ refused before load (key)."""
    by = {(r["family"], r["backend"]): r for r in results}
    header = "| family (`model_type`) | " + " | ".join(BACKENDS) + " |"
    lines = [header, "|" + "---|" * (len(BACKENDS) + 1)]
    for family in FAMILIES:
        row = [f"{family} (`{model_type(family)}`)"]
        for backend in BACKENDS:
            r = by.get((family, backend))
            if r is None:
                row.append("–")
            elif r["outcome"] == WORKS:
                row.append("✓")
            elif r["outcome"].startswith("refused"):
                row.append(f"✗ `{r['outcome'].split(': ', 1)[1]}`")
            else:
                row.append("FAILED")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


__all__ = ["BACKENDS", "FAMILIES", "REFUSED", "WORKS", "Backend", "cells", "expected", "markdown", "model_type",
           "random_windows", "run_cell", "tiny_family_model", "tiny_folder"]
