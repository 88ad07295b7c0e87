"""Hydra callback and `slimkit report`: the sweep report written at the end of a multirun."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from slimkit.core.errors import SlimkitError
from slimkit.sweeps.naming import OBJECTIVES
from slimkit.sweeps.render import render_markdown, summary_lines, write_sweep_report

log = logging.getLogger("slimkit.sweeps")

try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[assignment,misc]


class SweepReportCallback(_Callback):  # type: ignore[misc,valid-type]
    """Writes the sweep report when a multirun ends (registered in ``conf/config.yaml``)::

        hydra:
          callbacks:
            slimkit_sweep_report:
              _target_: slimkit.sweeps.SweepReportCallback
    """

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            result, paths = write_sweep_report(sweep_dir)
        except SlimkitError as exc:
            log.error("slimkit: sweep report not written: %s", exc)
            return
        print("\n".join(["", f"slimkit sweep report: {paths['html']}", *summary_lines(result)]))


def report_command(argv: Sequence[str]) -> int:
    """``slimkit report <sweep dir> [--min-quality Q] [--objective size|latency|perplexity]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="slimkit report", description="Aggregate a sweep folder: table, Pareto "
                                     "plots and an HTML page; print the best feasible configuration and the frontier.")
    parser.add_argument("sweep_dir")
    parser.add_argument("--min-quality", type=float, default=None,
                        help="quality floor (baseline ppl / ppl); default: the sweep's sweep.min_quality or 0.97")
    parser.add_argument("--objective", choices=OBJECTIVES, default=None)
    args = parser.parse_args(list(argv))
    result, paths = write_sweep_report(args.sweep_dir, args.min_quality, args.objective)
    print(render_markdown(result))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


