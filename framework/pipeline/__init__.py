"""One compression job: validate the config, load, evaluate, apply stages, save, verify, report."""

from slimkit.pipeline.runner import (
    load,
    recovery_hook,
    resolve_stages,
    run,
    save_artifact,
)

__all__ = ["load", "recovery_hook", "resolve_stages", "run", "save_artifact"]
