"""Process memory: hand freed memory back to the OS, and read the peak resident set size.

glibc serves allocations below its mmap threshold from the heap and keeps freed heap chunks in the process;
the threshold starts at 128 KiB and grows up to 32 MiB as large blocks are freed, so after the first weight
matrix is replaced most later ones (and full-vocabulary logits) land on the heap. A phase that frees one
model's weights and allocates another's (a quantizer replacing float weights by integer codes, a reload)
then peaks at both: measured on SmolLM2-135M, quanto int8 took the process from 0.97 to 1.72 GB although
what it leaves is 1.08 GB. :func:`large_frees_to_os` fixes the threshold so that blocks of at least
``SLIMKIT_MMAP_THRESHOLD`` bytes (default 1 MiB) are separate mappings, returned to the OS the moment they
are freed; :func:`release_memory` trims what smaller blocks leave behind between phases.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys

#: environment variable: the mmap threshold in bytes (0 leaves glibc's own dynamic threshold alone)
THRESHOLD_ENV = "SLIMKIT_MMAP_THRESHOLD"
DEFAULT_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune this way
        return None


def large_frees_to_os() -> int | None:
    """Make freed blocks of at least ``SLIMKIT_MMAP_THRESHOLD`` bytes go back to the OS at once (glibc's
    ``mallopt(M_MMAP_THRESHOLD)``, process-wide). Returns the threshold set, or None when left alone."""
    raw = os.environ.get(THRESHOLD_ENV, str(DEFAULT_THRESHOLD))
    try:
        threshold = int(raw)
    except ValueError:
        from slimkit.core.errors import ConfigError

        raise ConfigError(THRESHOLD_ENV, raw, "a whole number of bytes (0 keeps glibc's default)") from None
    libc = _libc()
    if threshold <= 0 or libc is None or not hasattr(libc, "mallopt"):
        return None
    return threshold if libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1 else None


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (``malloc_trim``): without it a later phase
    adds its memory on top of what an earlier one freed (e.g. tokenizing the corpus)."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (the kernel's high-water mark)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
