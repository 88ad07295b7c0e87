"""Sweeps that answer questions: fault-tolerant sweep jobs, a baseline evaluated once per sweep,
pre-launch validation of every combination, and one aggregated report with Pareto frontiers.

    slimkit -m experiment=tiny pruner.sparsity=0,0.5 quantizer.bits=4,8 hydra.sweep.dir=sweeps/a
    slimkit report sweeps/a                  # table (md/csv/json), Pareto PNGs, sweep.html
    slimkit -m +sweep=optuna_size            # Optuna: smallest artifact with quality >= 97%
    slimkit -m +sweep=ray pruner.sparsity=0,0.5        # same sweep on a Ray cluster
    slimkit -m +sweep=submitit_local pruner.sparsity=0,0.5   # or through submitit (SLURM: +sweep=slurm)
    slimkit -m '+sweep=[optuna_size,ray]' hydra.sweeper.n_jobs=4  # presets combine: 4 trials at a time on Ray

Quality is ``baseline perplexity / perplexity`` (1.0 = unchanged); a configuration is *feasible*
when its quality is at least ``sweep.min_quality``. Each job's folder is named after its overrides,
so re-running a sweep finds the jobs already complete and skips them (``sweep.redo=true`` re-runs).
"""

from slimkit.pipeline.baseline import cached_baseline
from slimkit.sweeps.aggregate import (
           Job,
           SweepResult,
           collect,
           dominates,
           find_jobs,
           pareto_front,
)
from slimkit.sweeps.callback import SweepReportCallback, report_command
from slimkit.sweeps.jobs import completed_report, objective, quality, sweep_job
from slimkit.sweeps.naming import SweepError, job_dirname
from slimkit.sweeps.render import write_sweep_report
from slimkit.sweeps.validate import expand_sweep, validate_sweep

__all__ = ["Job", "SweepError", "SweepReportCallback", "SweepResult", "cached_baseline", "collect", "completed_report",
           "dominates", "expand_sweep", "find_jobs", "job_dirname", "objective", "pareto_front", "quality",
           "report_command", "sweep_job", "validate_sweep", "write_sweep_report"]
