"""Sparse tensor storage inside a plain safetensors file.

A tensor with enough exact zeros is stored as two ordinary named tensors: a bitmask of its nonzero
entries (``<name>@mask``, uint8, ``numpy.packbits`` order) and its nonzero values in row-major order
(``<name>@values``, same dtype). The file's metadata (key ``slimkit.sparse``) lists the sparse
tensors with their shape and dtype, so :func:`load_tensors` rebuilds them. Every other tensor is
stored dense, as usual. The round trip is exact (``torch.equal``; NaN survives); it is bit-exact
except that ``-0.0`` comes back as ``+0.0`` unless ``keep_negative_zero=True``.

The bitmask costs 1 bit per element, so a tensor of ``b``-byte elements is stored sparse only when
that is smaller: above ~3% zeros for fp32, ~12.5% for int8 (e.g. quanto's ``_data`` tensors of a
pruned model). Bytes on disk shrink; the tensors in memory are dense again after loading, and
inference is no faster (dense kernels).

    >>> save_tensors({"w": pruned_weight}, "model.safetensors", metadata={"format": "pt"})
    >>> load_tensors("model.safetensors")["w"].equal(pruned_weight)
    True
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Any, Mapping

import numpy as np
import torch

from slimkit.core.errors import ArtifactError

#: metadata key holding the JSON description of the sparse tensors
SPARSE_KEY = "slimkit.sparse"
MASK, VALUES = "@mask", "@values"
#: tensors with fewer elements than this are always stored dense (the metadata would outweigh the saving)
MIN_ELEMENTS = 1024
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

__all__ = ["save_tensors", "load_tensors", "read_metadata", "encode", "save_sparse_model", "load_sparse_model",
           "untied_state_dict", "SPARSE_KEY"]


def _nonzero(t: torch.Tensor, keep_negative_zero: bool) -> torch.Tensor:
    """True where the element is stored as a value: nonzero, NaN, and -0.0 when ``keep_negative_zero``."""
    flat = t.reshape(-1)
    if keep_negative_zero or not t.is_floating_point():
        return flat.view(_INT_VIEW[t.element_size()]) != 0
    return (flat != 0) | flat.isnan()


def _encodable(t: torch.Tensor) -> bool:
    return t.dtype != torch.bool and not t.is_complex() and t.element_size() in _INT_VIEW and t.numel() >= MIN_ELEMENTS


def encode(tensors: Mapping[str, torch.Tensor], min_saving: float = 0.0, keep_negative_zero: bool = False
           ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Split ``tensors`` into what is written (dense tensors, and mask/values pairs) and the sparse index.

    A tensor is stored sparse when its bitmask + nonzero values are smaller than the dense bytes by
    more than the fraction ``min_saving``. By default a float ``-0.0`` counts as zero and comes back as
    ``+0.0`` (equal under ``==`` and ``torch.equal``; fine-tuning with masks leaves many of them);
    ``keep_negative_zero=True`` keeps it as a value, for a bit-exact round trip.
    """
    out: dict[str, torch.Tensor] = {}
    index: dict[str, dict] = {}
    for name, tensor in tensors.items():
        _check_name(name)
        t = tensor.detach().cpu().contiguous()
        nnz = _sparse_nnz(t, min_saving, keep_negative_zero)
        if nnz is None:
            out[name] = t
            continue
        out[name + MASK], out[name + VALUES] = _sparse_parts(t, keep_negative_zero)
        index[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "nnz": nnz}
    return out, index


#: safetensors' dtype names (the format's header) for the dtypes :func:`save_tensors` streams
_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
                       torch.float8_e5m2: "F8_E5M2"}


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, str] | None = None, min_saving: float = 0.0,
                 keep_negative_zero: bool = False) -> dict[str, int]:
    """Write ``tensors`` to a safetensors file at ``path``, storing sparse ones as bitmask + values.

    ``metadata`` (str → str) is kept in the file; ``min_saving`` and ``keep_negative_zero``: see
    :func:`encode`. Returns ``{"sparse_tensors": n, "dense_tensors": m}``.
    Shared storages must be deduplicated by the caller (safetensors refuses them), as for ``save_file``.

    The file is streamed one tensor at a time: a first pass counts each tensor's nonzeros (the header
    needs every size before the data), a second encodes and writes it, so at most one encoded tensor is in
    memory besides the model (safetensors' ``save_file`` takes every tensor at once and has no streaming
    writer). The file is read back by safetensors' own ``safe_open``.
    """
    meta = dict(metadata or {})
    if SPARSE_KEY in meta:
        raise ArtifactError(f"metadata key {SPARSE_KEY!r} is reserved for the sparse index")
    if sys.byteorder != "little" or any(t.dtype not in _SAFETENSORS_DTYPES for t in tensors.values()):
        from safetensors.torch import save_file  # whole-file writer for dtypes this one does not map

        out, index = encode(tensors, min_saving, keep_negative_zero)
        meta[SPARSE_KEY] = json.dumps(index, separators=(",", ":"))
        save_file(out, str(path), metadata=meta)
        return {"sparse_tensors": len(index), "dense_tensors": len(tensors) - len(index)}
    header: dict[str, Any] = {}
    index: dict[str, dict] = {}
    sparse: set[str] = set()
    offset = 0

    def entry(name: str, dtype: torch.dtype, shape: list[int], numel: int) -> None:
        nonlocal offset
        end = offset + numel * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": shape, "data_offsets": [offset, end]}
        offset = end

    for name, tensor in tensors.items():  # pass 1: sizes only
        _check_name(name)
        nnz = _sparse_nnz(tensor, min_saving, keep_negative_zero)
        if nnz is None:
            entry(name, tensor.dtype, list(tensor.shape), tensor.numel())
            continue
        sparse.add(name)
        index[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch."), "nnz": nnz}
        entry(name + MASK, torch.uint8, [(tensor.numel() + 7) // 8], (tensor.numel() + 7) // 8)
        entry(name + VALUES, tensor.dtype, [nnz], nnz)
    meta[SPARSE_KEY] = json.dumps(index, separators=(",", ":"))
    blob = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as fh:  # pass 2: encode and write one tensor at a time
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, tensor in tensors.items():
            t = tensor.detach().cpu().contiguous()
            parts = _sparse_parts(t, keep_negative_zero) if name in sparse else (t,)
            for part in parts:
                fh.write(part.reshape(-1).view(torch.uint8).numpy().data)
    return {"sparse_tensors": len(index), "dense_tensors": len(tensors) - len(index)}


def _check_name(name: str) -> None:
    if name.endswith((MASK, VALUES)):
        raise ArtifactError(f"tensor name {name!r} ends with a suffix reserved for sparse storage ({MASK}, {VALUES})")


def _sparse_nnz(tensor: torch.Tensor, min_saving: float, keep_negative_zero: bool) -> int | None:
    """The tensor's stored-value count if it is stored sparse (smaller than dense by more than
    ``min_saving``), else None."""
    t = tensor.detach()
    if not _encodable(t):
        return None
    nnz = int(torch.count_nonzero(_nonzero(t.cpu().contiguous(), keep_negative_zero)))  # a bool sum() would make an int64 copy
    sparse_bytes = (t.numel() + 7) // 8 + nnz * t.element_size()
    return nnz if sparse_bytes < t.numel() * t.element_size() * (1.0 - min_saving) else None


def _sparse_parts(t: torch.Tensor, keep_negative_zero: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(bitmask in ``numpy.packbits`` order, nonzero values in row-major order) of a contiguous tensor."""
    keep = _nonzero(t, keep_negative_zero)
    return torch.from_numpy(np.packbits(keep.numpy())), t.reshape(-1)[keep]


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The file's metadata without the sparse index."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    meta.pop(SPARSE_KEY, None)
    return meta


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_tensors` (or any plain safetensors file) into dense tensors."""
    from safetensors import safe_open

    from slimkit.core.memory import trim_heap

    if not os.path.isfile(path):
        raise ArtifactError(f"{str(path)!r} does not exist")
    try:  # each tensor read into memory of its own: a memory-mapped file stays resident while any view of it lives
        opened = safe_open(str(path), framework="pt", backend="pread")
    except TypeError:  # safetensors < 0.8 has no backend choice
        opened = safe_open(str(path), framework="pt")
    with opened as fh:
        meta = fh.metadata() or {}
        try:
            index = json.loads(meta.get(SPARSE_KEY, "{}"))
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path}: corrupt sparse index in metadata key {SPARSE_KEY!r}: {exc}") from exc
        raw = {name: fh.get_tensor(name) for name in fh.keys()}
    out: dict[str, torch.Tensor] = {}
    for name, spec in index.items():
        try:
            bits, values = raw.pop(name + MASK), raw.pop(name + VALUES)
        except KeyError as exc:
            raise ArtifactError(f"{path}: sparse tensor {name!r} lacks its {exc.args[0]!r} part") from exc
        numel = int(np.prod(spec["shape"], dtype=np.int64))
        keep = torch.from_numpy(np.unpackbits(bits.numpy(), count=numel).astype(bool))
        if int(torch.count_nonzero(keep)) != values.numel() or str(values.dtype).removeprefix("torch.") != spec["dtype"]:
            raise ArtifactError(f"{path}: sparse tensor {name!r} has {values.numel()} {values.dtype} values for "
                                f"{int(torch.count_nonzero(keep))} mask bits ({spec['dtype']} expected)")
        dense = torch.zeros(numel, dtype=values.dtype)
        dense[keep] = values
        out[name] = dense.view(spec["shape"])
        if len(out) % 8 == 0:
            trim_heap()  # the mask's temporaries, freed, would otherwise stay resident (below glibc's mmap threshold)
    out.update(raw)
    return out


# --- whole models ----------------------------------------------------------------------------------

#: the weights file of every artifact in a backend's own format (sparse, quanto, bnb, int8). Deliberately
#: not ``model.safetensors``: plain ``from_pretrained`` must refuse such a folder instead of silently
#: initialising the layers whose tensors it cannot read; ``slimkit.load`` reads it.
WEIGHTS = "model.slimkit.safetensors"


def unique_tensors(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of ``state_dict`` with each shared storage kept once, under its first name (safetensors
    refuses shared tensors; a tied lm_head/embedding is written once and re-tied on load). Meta tensors and
    non-tensors are skipped."""
    seen: set[tuple[int, int, tuple, torch.dtype]] = set()
    out = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous()
    return out


def untied_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with each shared storage kept once (see :func:`unique_tensors`)."""
    return unique_tensors(model.state_dict())


def save_model_config(model: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Write the model's ``config.json`` (and ``generation_config.json`` if it has one): the part of an
    artifact every backend format shares. The config records the dtype of the model's float weights (the
    input embedding's), so a loader rebuilds the skeleton in the dtype the tensors were written in."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        model.config.dtype = weight.dtype
    model.config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)


def save_sparse_model(model: torch.nn.Module, directory: str | os.PathLike) -> dict[str, int]:
    """Write a float model's config and weights (sparse storage) into ``directory``."""
    from pathlib import Path

    directory = Path(directory)
    save_model_config(model, directory)
    return save_tensors(untied_state_dict(model), directory / WEIGHTS, metadata={"format": "pt", "writer": "slimkit.toolkit.storage"})


def load_sparse_model(directory: str | os.PathLike) -> torch.nn.Module:
    """Rebuild a model written by :func:`save_sparse_model`: build it from its config, load the weights,
    re-tie shared weights. Safetensors only."""
    from pathlib import Path

    from transformers import AutoConfig, AutoModelForCausalLM

    from slimkit.core.artifact import saved_dtype

    directory = Path(directory)
    config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, dtype=saved_dtype(config))
    state_dict = load_tensors(directory / WEIGHTS)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    model.tie_weights()
    missing = sorted(set(missing) & set(untied_state_dict(model)))
    if missing or unexpected:
        raise ArtifactError(f"{directory}: weights do not match the config: missing {missing[:5]}, "
                            f"unexpected {list(unexpected)[:5]}")
    return model.eval()
