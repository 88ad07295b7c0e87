"""Process memory settings (slimkit.core.memory)."""

import ctypes.util

import pytest

from slimkit.core.errors import ConfigError
from slimkit.core.memory import DEFAULT_THRESHOLD, THRESHOLD_ENV, large_frees_to_os, peak_rss_bytes

glibc = pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="needs a C library")


@glibc
def test_default_threshold_is_set_and_zero_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.delenv(THRESHOLD_ENV, raising=False)
    assert large_frees_to_os() == DEFAULT_THRESHOLD
    monkeypatch.setenv(THRESHOLD_ENV, "0")
    assert large_frees_to_os() is None


def test_a_bad_threshold_names_the_variable(monkeypatch):
    monkeypatch.setenv(THRESHOLD_ENV, "1MB")
    with pytest.raises(ConfigError, match=THRESHOLD_ENV):
        large_frees_to_os()


_FRAGMENT = """
import psutil, torch
from slimkit.core.memory import large_frees_to_os
large_frees_to_os()
p = psutil.Process()
big = torch.ones(30 << 18); del big  # a freed 30 MiB mapping raises glibc's dynamic threshold to 30 MiB
before = p.memory_info().rss
blocks, pins = [], []
for _ in range(40):
    blocks.append(torch.ones(1 << 19))  # 2 MiB each (a weight matrix of a small model)
    pins.append(torch.ones(1 << 14))    # 64 KiB kept alive, so the freed blocks cannot merge into the heap's top
del blocks
print((p.memory_info().rss - before) >> 20)
"""


@glibc
def test_freed_weight_sized_blocks_leave_the_process_only_with_the_threshold():
    """80 MiB of 2 MiB blocks, freed: glibc's default keeps them in the process; the threshold returns them."""
    import os
    import subprocess
    import sys

    def retained_mib(threshold: str) -> int:
        env = {**os.environ, THRESHOLD_ENV: threshold, "OMP_NUM_THREADS": "1"}
        return int(subprocess.run([sys.executable, "-c", _FRAGMENT], env=env, capture_output=True, text=True,
                                  check=True).stdout.split()[-1])

    assert retained_mib("0") > 60  # glibc's own behaviour: the freed blocks stay resident
    assert retained_mib(str(DEFAULT_THRESHOLD)) < 20
    assert peak_rss_bytes() > 0
