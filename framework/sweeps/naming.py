"""Job folders named after their overrides, and the names of the files a sweep writes."""

from __future__ import annotations

import hashlib
import logging
import re

from omegaconf import OmegaConf

from slimkit.core.errors import ArtifactError

log = logging.getLogger("slimkit.sweeps")

STATUS_FILE = "status.json"
REPORT_FILE = "report.json"
#: files written into the sweep folder by :func:`write_sweep_report`
OUTPUTS = {"markdown": "sweep.md", "csv": "sweep.csv", "json": "sweep.json", "html": "sweep.html",
           "size_plot": "pareto_size.png", "speed_plot": "pareto_speed.png"}
OBJECTIVES = ("size", "latency", "perplexity")
KINDS = ("pruner", "distiller", "quantizer")
#: overrides shown in their own columns rather than under "other overrides"
COLUMN_KEYS = {"pruner", "distiller", "quantizer", "pruner.sparsity", "quantizer.bits", "exporter"}


class SweepError(ArtifactError):
    """A sweep folder cannot be read as a sweep, or a sweep cannot be launched as configured."""



def job_dirname(override_dirname: str) -> str:
    """A safe, stable folder name for a job's overrides (Hydra's ``override_dirname``).

    Short names stay readable (``pruner.sparsity=0.5,quantizer.bits=4``); path separators are
    replaced and long names are cut and suffixed with a hash of the full text."""
    text = str(override_dirname or "") or "default"
    safe = re.sub(r"[^A-Za-z0-9_.=,+\-\[\]]", "_", text)
    if len(safe) > 120 or safe in {".", ".."}:
        safe = safe[:80] + "-" + hashlib.sha1(text.encode()).hexdigest()[:12]
    return safe


if not OmegaConf.has_resolver("slimkit_jobdir"):
    OmegaConf.register_new_resolver("slimkit_jobdir", job_dirname)

def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")
