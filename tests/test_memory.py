"""Weights copied out of the memory-mapped checkpoint (slimkit.core.memory.own_storages)."""

import sys

import pytest
import torch

from slimkit.core.artifact import load_pretrained
from slimkit.core.memory import _extent, file_mappings, modified_pages, own_storages, reclaim_file_pages
from slimkit.models import load_model, tiny_model
from slimkit.models.loading import tiny_tokenizer

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="file mappings are read from /proc/self/maps")


def _in_file_mapping(tensor: torch.Tensor) -> bool:
    start, end = _extent(tensor)
    return any(lo <= start and end <= hi for lo, hi, _ in file_mappings())


@pytest.fixture
def folder(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(tmp_path)
    return tmp_path


def _prune_in_place(model: torch.nn.Module) -> None:
    with torch.no_grad():  # a pruner's in-place zeroing: copy-on-write pages of the private file mapping
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                weight = module.weight
                weight[weight.abs() < weight.abs().median()] = 0


def test_weights_modified_in_place_survive_the_move_out_of_the_mapping(folder):
    model = load_pretrained(folder, dtype="float32")
    assert all(_in_file_mapping(p) for p in model.parameters())  # what transformers gives (else this tests nothing)
    _prune_in_place(model)
    expected = {name: p.detach().clone() for name, p in model.named_parameters()}
    parameters = {name: p for name, p in model.named_parameters()}

    copied = own_storages(model)

    assert copied == sum(p.nbytes for p in model.parameters())  # named_parameters counts the tied weight once
    for name, p in model.named_parameters():
        assert p is parameters[name]  # the same Parameter objects, new data
        assert not _in_file_mapping(p)
        assert torch.equal(p, expected[name]), name
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    with torch.no_grad():  # and tied in memory too: one change shows through both
        model.model.embed_tokens.weight[0, 0] = 123.0
    assert model.lm_head.weight[0, 0].item() == 123.0
    assert not any(folder.name in path for _, _, path in file_mappings())  # the checkpoint is no longer mapped
    assert own_storages(model) == 0  # nothing left to move


def _resident_pages(tensor: torch.Tensor) -> list[bool]:
    import array
    import mmap

    start, end = _extent(tensor)
    first, last = start // mmap.PAGESIZE, (end - 1) // mmap.PAGESIZE
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(first * 8)
        return [bool(e >> 63) for e in array.array("Q", pagemap.read((last - first + 1) * 8))]


def test_reclaiming_keeps_changes_made_in_place_and_drops_the_files_pages(folder):
    """Pages modified in place must keep their values (MADV_DONTNEED on them would bring back the file's);
    pages still equal to the file's leave resident memory."""
    model = load_pretrained(folder, dtype="float32")
    weight = model.model.embed_tokens.weight  # 512 x 64 floats = 32 pages
    assert _in_file_mapping(weight)
    with torch.no_grad():
        weight[:256].mul_(-2.0)  # the first half modified in place (copy-on-write), the second half only read
        weight[5] = 7.0
        assert weight[256:].sum().item() != 0
    expected = weight.detach().clone()
    start, end = _extent(weight)
    flags = modified_pages(start - start % 4096, len(_resident_pages(weight)))
    assert flags is not None and any(flags) and not all(flags)
    assert all(_resident_pages(weight))

    reclaim_file_pages(start, end)

    resident = _resident_pages(weight)
    assert not resident[-1] and resident[0]  # the file's pages left resident memory, the modified ones stayed
    assert torch.equal(weight, expected)  # (reading faults the file's pages in again)


def test_load_model_returns_weights_of_its_own_with_the_same_logits(folder):
    loaded = load_model(path=str(folder))
    assert not any(_in_file_mapping(t) for t in [*loaded.model.parameters(), *loaded.model.buffers()])
    mapped = load_pretrained(folder, dtype="float32")
    ids = torch.arange(12)[None]
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, mapped(input_ids=ids).logits)


def test_tensors_not_in_a_file_are_left_alone():
    model = tiny_model()
    data = {name: p.data_ptr() for name, p in model.named_parameters()}
    assert own_storages(model) == 0
    assert data == {name: p.data_ptr() for name, p in model.named_parameters()}


@pytest.mark.parametrize("batch_size", [1, 3])
def test_perplexity_loss_written_over_the_logits_has_the_same_bits_as_cross_entropy(batch_size):
    from slimkit.evaluation.metrics import mean_next_token_loss, next_token_nll

    model = tiny_model()
    windows = torch.randint(0, 512, (5, 48), generator=torch.Generator().manual_seed(0))
    total = 0.0
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start:start + batch_size]
            total += next_token_nll(model(input_ids=batch, use_cache=False).logits, batch, "sum").item()
    assert mean_next_token_loss(model, windows, batch_size) == total / windows[:, 1:].numel()


def test_peak_rss_is_the_process_own_not_the_image_it_was_started_from():
    """A run started by a large process (a notebook, a benchmark) reports its own peak: Linux's ``ru_maxrss`` keeps
    the high-water RSS of the image a process ``exec()``s from, ``peak_rss_bytes`` does not."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("the inherited high-water mark is Linux behaviour")
    ballast = bytearray(800 * 2**20)
    ballast[::4096] = b"\1" * (len(ballast) // 4096)  # resident: this process now holds > 800 MB
    code = ("import resource; from slimkit.core.memory import peak_rss_bytes; "
            "print(peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    own, inherited = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                             check=True).stdout.split())
    assert inherited > 800 * 2**20 > 2 * own, (own, inherited)  # the child alone: python + torch, ~230 MB
    del ballast
