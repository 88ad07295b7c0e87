"""Process memory: hand freed heap memory back to the OS between phases, and read the peak resident set size.

glibc serves allocations below its mmap threshold from the heap and keeps freed heap chunks in the process;
the threshold starts at 128 KiB and grows up to 32 MiB as large blocks are freed, so most weight matrices of
a small model, once freed, stay resident until ``malloc_trim``. A phase that replaces one model's weights
by another's (a quantizer swapping float weights for integer codes) therefore frees and trims as it goes
(see the quanto plugin), and the pipeline trims between phases (:func:`release_memory`). Fixing a low mmap
threshold for the whole process instead was measured and rejected: every large temporary then costs a
fresh mapping and page faults, which slowed quanto's int8 decode several-fold on SmolLM2 in a scratch check (benchmarks/memory.md).

A loaded checkpoint is a second matter: transformers memory-maps the safetensors file and every weight is a view
of that one mapping, which stays while any weight from it lives. A stage that replaces most weights (a quantizer)
then frees nothing, and weights changed in place (pruning) are copy-on-write pages of the mapping that stay too.
:func:`own_storages` gives each weight its own memory right after loading, so what a stage replaces is freed.
"""

from __future__ import annotations

import array
import ctypes
import gc
import mmap
import sys

import torch


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (``malloc_trim``): without it a later phase
    adds its memory on top of what an earlier one freed (e.g. tokenizing the corpus)."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc's ``malloc_trim``; nothing elsewhere), without collecting
    garbage: cheap enough to call every few tensors in a loop that allocates and frees MB-sized temporaries."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to hand back this way
        return
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (the kernel's high-water mark of its address space).

    On Linux ``VmHWM``, not ``ru_maxrss``: the latter keeps the high-water RSS of the image the process was
    ``exec()``-ed from, so a run started by a large process would report at least that process's size."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


#: ``madvise`` advice that reclaims pages without changing their contents (modified copy-on-write pages are swapped
#: out or, without swap, kept); the kernel skips pages another process also maps
MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)
#: ``madvise`` advice that unmaps pages: a private file mapping's page is then read from the file again if touched,
#: which DISCARDS changes made to it in place, so it is given only to pages the kernel reports unmodified
MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)
_PM_SWAPPED, _PM_FILE, _PM_PRESENT = 1 << 62, 1 << 61, 1 << 63  # /proc/self/pagemap entry bits


def modified_pages(start: int, count: int) -> list[bool] | None:
    """For each of ``count`` pages from address ``start`` (page-aligned) of a private file mapping: whether it holds
    this process's own data (a copy-on-write copy made by writing to it, resident or swapped out) rather than the
    file's. None where ``/proc/self/pagemap`` cannot be read."""
    try:
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(start // mmap.PAGESIZE * 8)
            entries = array.array("Q", pagemap.read(count * 8))
    except (OSError, ValueError):
        return None
    if len(entries) != count:
        return None
    return [bool(e & _PM_SWAPPED) or (bool(e & _PM_PRESENT) and not e & _PM_FILE) for e in entries]


def _madvise(start: int, length: int, advice: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), advice) == 0
    except (OSError, AttributeError):
        return False


def reclaim_file_pages(start: int, end: int) -> None:
    """Take the pages holding ``[start, end)`` of a private file mapping out of this process's resident memory
    without changing what they hold: pages still equal to the file's are unmapped (``MADV_DONTNEED``; read from the
    file again if touched), pages modified in place are left to ``MADV_PAGEOUT`` (kept without swap). Where
    ``/proc/self/pagemap`` cannot say which is which, everything gets ``MADV_PAGEOUT``. Linux only."""
    page = mmap.PAGESIZE
    start, end = start - start % page, end + (-end) % page
    count = (end - start) // page
    modified = modified_pages(start, count) if count else []
    if modified is None:
        _madvise(start, end - start, MADV_PAGEOUT)
        return
    first = 0
    for index in range(1, count + 1):  # one call per run of pages of the same kind
        if index == count or modified[index] != modified[first]:
            advice = MADV_PAGEOUT if modified[first] else MADV_DONTNEED
            _madvise(start + first * page, (index - first) * page, advice)
            first = index


def file_mappings() -> list[tuple[int, int, str]]:
    """This process's memory mappings of files, as sorted ``(start, end, path)`` (empty where ``/proc`` is not)."""
    try:
        lines = open("/proc/self/maps").read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append((start, end, fields[5]))
    return sorted(found)


def _extent(tensor: torch.Tensor) -> tuple[int, int]:
    """The byte range ``[start, end)`` a strided tensor's elements span."""
    span = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    start = tensor.data_ptr()
    return start, start + span * tensor.element_size()


def own_storages(model: torch.nn.Module) -> int:
    """Copy every CPU parameter and buffer whose data lies in a memory-mapped file (the safetensors checkpoint
    transformers loads from) into memory of its own, one tensor at a time; return how many bytes were copied.

    The mapping stays while any tensor from it lives, so without this, weights a stage replaces (a quantizer's)
    are never freed and weights changed in place (pruning) become private copy-on-write pages of it that stay too.
    Tied weights stay tied: a parameter keeps its object (only its data is replaced) and tensors that are the same
    view get the same copy. The copy is made a few MB at a time and each part's source pages leave resident memory
    as soon as it is copied (:func:`reclaim_file_pages`, which never changes what a page holds, also for weights
    already modified in place), so the move holds a few MB more than the model, not two models. Elsewhere than
    Linux nothing is copied."""
    import bisect

    mappings = file_mappings()
    starts = [m[0] for m in mappings]

    def mapping_of(tensor: torch.Tensor) -> tuple[int, int, str] | None:
        if tensor is None or tensor.device.type != "cpu" or not tensor.numel():
            return None
        start, end = _extent(tensor)
        index = bisect.bisect_right(starts, start) - 1
        return mappings[index] if index >= 0 and end <= mappings[index][1] else None

    views: dict[tuple, list[tuple[dict, str, torch.Tensor]]] = {}
    for module in model.modules():
        for slots in (module._parameters, module._buffers):
            for name, tensor in slots.items():
                if mapping_of(tensor) is not None:
                    key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
                    views.setdefault(key, []).append((slots, name, tensor))
    extents = sorted(_extent(group[0][2]) for group in views.values())
    if any(later[0] < earlier[1] for earlier, later in zip(extents, extents[1:])):
        return 0  # views that partly overlap: copying them apart would change what they share
    copied = 0
    with torch.no_grad():
        for group in views.values():
            copy = _copy_reclaiming(group[0][2].detach())
            for slots, name, tensor in group:
                if isinstance(tensor, torch.nn.Parameter):
                    tensor.data = copy  # the same Parameter object, so ties and references to it hold
                else:
                    slots[name] = copy
            copied += copy.nbytes
    return copied


def _copy_reclaiming(source: torch.Tensor, chunk_bytes: int = 8 << 20) -> torch.Tensor:
    """A copy of ``source`` made ``chunk_bytes`` at a time along its first dimension, reclaiming each chunk's
    source pages as soon as it is copied (so a large embedding is never held twice)."""
    if not source.is_contiguous() or source.dim() == 0:
        copy = source.clone()
        reclaim_file_pages(*_extent(source))
        return copy
    copy = torch.empty_like(source)
    rows = max(1, chunk_bytes // max(1, source[0].nbytes)) if source.dim() > 1 else max(1, chunk_bytes // source.element_size())
    for first in range(0, source.shape[0], rows):
        part = source[first:first + rows]
        copy[first:first + rows].copy_(part)
        reclaim_file_pages(*_extent(part))
    return copy
