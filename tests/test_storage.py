"""Sparse tensor storage: exact round trips, smaller files with sparsity, whole-model save/load."""

import json
import os

import pytest

from slimkit.toolkit.storage import WEIGHTS
import torch
from safetensors.torch import save_file

from slimkit.core.errors import ArtifactError
from slimkit.models import tiny_model
from slimkit.toolkit.storage import SPARSE_KEY, load_sparse_model, load_tensors, read_metadata, save_sparse_model, save_tensors

torch.set_num_threads(1)


def _sparse(shape, sparsity, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g)
    t[torch.rand(shape, generator=g) < sparsity] = 0
    return t.to(dtype)


def _bits(t):
    return t.reshape(-1).view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("keep_negative_zero", [True, False])
def test_round_trip_is_exact(tmp_path, keep_negative_zero):
    w = _sparse((128, 96), 0.6)
    w[0, 0], w[0, 1], w[0, 2] = -0.0, float("nan"), float("inf")
    tensors = {
        "w": w,
        "bf16": _sparse((64, 64), 0.5, torch.bfloat16),
        "int8": (_sparse((64, 64), 0.7) * 20).to(torch.int8),
        "dense": torch.randn(50, 50),
        "small": torch.zeros(7),
        "scalar": torch.tensor(3.5),
        "mask": torch.rand(40, 40) > 0.5,
        "int64": torch.arange(2048).reshape(32, 64) * (torch.arange(2048).reshape(32, 64) % 3 == 0),
    }
    counts = save_tensors(tensors, tmp_path / "t.safetensors", metadata={"format": "pt", "note": "x"},
                          keep_negative_zero=keep_negative_zero)
    assert counts["sparse_tensors"] == 4  # w, bf16, int8, int64; the others are small, dense or bool
    loaded = load_tensors(tmp_path / "t.safetensors")
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape, name
        if t.dtype == torch.bool:
            assert torch.equal(loaded[name], t)
        elif keep_negative_zero:
            assert torch.equal(_bits(loaded[name]), _bits(t)), name  # bit-exact: -0.0 and NaN survive
        else:
            assert torch.equal(loaded[name].nan_to_num(7.0), t.nan_to_num(7.0)), name
            assert loaded[name].isnan().sum() == t.isnan().sum()
    assert torch.signbit(load_tensors(tmp_path / "t.safetensors")["w"][0, 0]) == keep_negative_zero
    assert read_metadata(tmp_path / "t.safetensors") == {"format": "pt", "note": "x"}


def test_negative_zeros_count_as_zeros_by_default(tmp_path):
    w = -_sparse((128, 128), 0.0).abs()
    w[:, :64] = -0.0  # what masked fine-tuning leaves behind
    for keep in (False, True):
        save_tensors({"w": w}, tmp_path / f"{keep}.safetensors", keep_negative_zero=keep)
    assert (tmp_path / "False.safetensors").stat().st_size < 0.6 * (tmp_path / "True.safetensors").stat().st_size


def test_plain_safetensors_files_load(tmp_path):
    t = {"a": torch.randn(3, 3)}
    save_file(t, str(tmp_path / "p.safetensors"))
    assert torch.equal(load_tensors(tmp_path / "p.safetensors")["a"], t["a"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_file_shrinks_with_sparsity(tmp_path, dtype):
    sizes, expected = [], []
    for s in (0.0, 0.3, 0.5, 0.7, 0.9):
        t = (_sparse((256, 256), s) * (20 if dtype == torch.int8 else 1)).to(dtype)
        path = tmp_path / f"{s}.safetensors"
        save_tensors({"w": t}, path)
        sizes.append(path.stat().st_size)
        nnz = int(torch.count_nonzero(t))
        expected.append(min(t.numel() * t.element_size(), t.numel() // 8 + nnz * t.element_size()))
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    for size, payload in zip(sizes, expected):  # payload = min(dense, bitmask + nonzero values), plus a header
        assert payload <= size <= payload + 1024


def test_reserved_names_are_errors(tmp_path):
    with pytest.raises(ArtifactError):
        save_tensors({"x@mask": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(ArtifactError):
        save_tensors({"x": torch.zeros(2)}, tmp_path / "x.safetensors", metadata={SPARSE_KEY: "{}"})
    with pytest.raises(ArtifactError):
        load_tensors(tmp_path / "missing.safetensors")


def test_model_round_trip_keeps_ties_and_logits(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m is not model.lm_head:
                m.weight[m.weight.abs() < m.weight.abs().median()] = 0
    save_sparse_model(model, tmp_path)
    dense_path = tmp_path / "dense.safetensors"
    from slimkit.toolkit.storage import untied_state_dict

    save_file(untied_state_dict(model), str(dense_path))
    assert (tmp_path / WEIGHTS).stat().st_size < 0.85 * os.path.getsize(dense_path)
    reloaded = load_sparse_model(tmp_path)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_streamed_file_is_what_safetensors_writes(tmp_path):
    """save_tensors streams its file itself: safetensors' own reader must see the same tensors, metadata and
    byte-identical data as safetensors' whole-file writer would store for the same encoded tensors."""
    from safetensors import safe_open

    from slimkit.toolkit.storage import encode

    tensors = {"w": _sparse((96, 80), 0.5), "bf16": _sparse((33, 65), 0.6, torch.bfloat16),
               "int8": (_sparse((64, 64), 0.7) * 20).to(torch.int8), "dense": torch.randn(17, 3),
               "flags": torch.rand(31) > 0.5, "scalar": torch.tensor(2.0, dtype=torch.float64),
               "t": torch.randn(40, 30).t()}  # non-contiguous
    save_tensors(tensors, tmp_path / "streamed.safetensors", metadata={"format": "pt"})
    encoded, index = encode(tensors)
    assert set(index) == {"w", "bf16", "int8"}
    with safe_open(str(tmp_path / "streamed.safetensors"), framework="pt") as fh:
        assert set(fh.keys()) == set(encoded)
        assert fh.metadata()["format"] == "pt" and json.loads(fh.metadata()[SPARSE_KEY]) == index
        for name, expected in encoded.items():
            got = fh.get_tensor(name)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert torch.equal(_bits(got.contiguous()), _bits(expected.contiguous())), name
    back = load_tensors(tmp_path / "streamed.safetensors")
    assert all(torch.equal(back[k], v) for k, v in tensors.items() if k != "flags")
    assert torch.equal(back["flags"], tensors["flags"])
