"""Which data-parallel process this is, read from the launcher's environment.

``torchrun`` (and ``accelerate launch`` through it) sets ``RANK`` and ``WORLD_SIZE`` in every worker;
a plain run has neither and is process 0 of 1. Reading the environment keeps this free of
``torch.distributed`` (no process group is created just to ask).
"""

from __future__ import annotations

import os


def process_index() -> int:
    """This process's rank among the data-parallel workers (0 when not launched in parallel)."""
    return int(os.environ.get("RANK", "0"))


def num_processes() -> int:
    """How many data-parallel workers run this job (1 when not launched in parallel)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process writes the artifact, the report and the run folder."""
    return process_index() == 0
