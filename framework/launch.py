"""``accelerate launch --cpu --num_processes N -m slimkit ...``: N data-parallel worker processes.

accelerate (1.15) starts several CPU processes only through ``mpirun`` (``--mpirun_hostfile``); without
it, ``accelerate launch --cpu --num_processes N`` runs the script *once*, with ``MASTER_ADDR`` set but no
``RANK``/``WORLD_SIZE`` (huggingface/accelerate#2741). slimkit recognises that case and starts the N
workers itself with torch's elastic launcher (``torch.distributed.run --standalone``; gloo on CPU), each
inheriting accelerate's environment. Under ``torchrun`` or a multi-GPU ``accelerate launch`` the workers
already carry ``RANK``/``WORLD_SIZE`` and nothing here runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _parent_command() -> list[str]:
    """The command line of the process that started this one (empty when it cannot be read)."""
    import psutil  # a dependency of accelerate

    try:
        return psutil.Process(os.getppid()).cmdline()
    except psutil.Error:
        return []


def _launcher_processes() -> int | None:
    """``--num_processes`` of the ``accelerate launch`` command that started this process, if any."""
    from accelerate.commands.launch import launch_command_parser

    argv = _parent_command()
    if "launch" not in argv or not any(os.path.basename(a).startswith("accelerate") for a in argv[: argv.index("launch")]):
        return None
    try:
        args, _ = launch_command_parser().parse_known_args(argv[argv.index("launch") + 1:])
    except SystemExit:
        return None
    return args.num_processes


def requested_cpu_processes() -> int | None:
    """N when this process is accelerate's single stand-in for an N-process CPU job (N > 1), else None."""
    if "WORLD_SIZE" in os.environ or "RANK" in os.environ:
        return None
    if not _truthy(os.environ.get("ACCELERATE_USE_CPU")) or "MASTER_ADDR" not in os.environ:
        return None
    n = _launcher_processes()
    return n if n and n > 1 else None


def run_workers(argv: Sequence[str], processes: int) -> int:
    """Run ``python -m slimkit <argv>`` in ``processes`` data-parallel workers; return their exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "slimkit", *argv]
    return subprocess.call(cmd)
