"""Process memory: hand freed heap memory back to the OS between phases, and read the peak resident set size.

glibc serves allocations below its mmap threshold from the heap and keeps freed heap chunks in the process;
the threshold starts at 128 KiB and grows up to 32 MiB as large blocks are freed, so most weight matrices of
a small model, once freed, stay resident until ``malloc_trim``. A phase that replaces one model's weights
by another's (a quantizer swapping float weights for integer codes) therefore frees and trims as it goes
(see the quanto plugin), and the pipeline trims between phases (:func:`release_memory`). Fixing a low mmap
threshold for the whole process instead was measured and rejected: every large temporary then costs a
fresh mapping and page faults, which slowed quanto's int8 decode several-fold on SmolLM2 in a scratch check (benchmarks/memory.md).
"""

from __future__ import annotations

import ctypes
import gc
import sys


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (``malloc_trim``): without it a later phase
    adds its memory on top of what an earlier one freed (e.g. tokenizing the corpus)."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to hand back this way
        return
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (the kernel's high-water mark)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
