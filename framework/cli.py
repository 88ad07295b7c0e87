"""The ``slimkit`` command: a Hydra app, plus the ``plugins`` subcommand.

    slimkit                                   # default recipe on the embedded model
    slimkit quantizer=quanto quantizer.bits=4 # swap/override a backend by name
    slimkit -m pruner.sparsity=0.25,0.5 quantizer.bits=4,8   # Hydra multirun sweep
    slimkit plugins                           # what is installed, and whether it can run
    slimkit report <sweep dir>                # aggregate a sweep: table, Pareto plots, sweep.html
"""

from __future__ import annotations

import re
import sys
from importlib import resources
from typing import Sequence

from slimkit.core.errors import PluginError, SlimkitError, UnknownPluginError
from slimkit.core.plugin import Kind
from slimkit.core.registry import Registry, default_registry


def plugins_table(registry: Registry) -> str:
    """One line per discovered plugin: kind, name, distribution, version, and whether it can run."""
    from slimkit.core.errors import MissingDependencyError

    rows = [("kind", "name", "distribution", "version", "status")]
    for info in registry.infos():
        try:
            registry.get(info.kind, info.name).check_dependencies()
            status = "ok"
        except MissingDependencyError as exc:
            status = f"missing {exc.module}: {exc.hint}"
        except PluginError as exc:
            status = f"broken: {exc}"
        rows.append((info.kind.value, info.name, info.distribution, info.version, status))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows)


def _presets(kind: str) -> set[str]:
    folder = resources.files("slimkit.conf") / kind
    try:
        return {p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def check_backend_overrides(args: Sequence[str], registry: Registry) -> None:
    """Fail early, with the installed names and the pip hint, on ``quantizer=<unknown>``."""
    for arg in args:
        match = re.fullmatch(r"[+~]*(pruner|distiller|quantizer|exporter)=(.+)", arg)
        if not match:
            continue
        kind, value = match.groups()
        known = set(registry.names(Kind(kind))) | _presets(kind) | {"null"}
        for name in re.split(r"[,\[\]]", value):  # multirun choices; exporter=[gguf,onnx] lists
            if not name.strip():
                continue
            if name.strip() not in known:
                raise UnknownPluginError(kind, name.strip(), known - {"null"})


def _hydra_app() -> None:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path="pkg://slimkit.conf", config_name="config")
    def app(cfg: DictConfig) -> float | None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from slimkit.pipeline import run

        if HydraConfig.get().mode is RunMode.MULTIRUN:  # a sweep job: failures recorded, not raised
            from slimkit.sweeps import sweep_job

            return sweep_job(cfg, HydraConfig.get().runtime.output_dir)
        try:
            run(cfg, HydraConfig.get().runtime.output_dir)
        except SlimkitError as exc:
            print(f"slimkit: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    app()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    registry = default_registry()
    try:
        if argv[:1] == ["plugins"]:
            print(plugins_table(registry))
            return 0
        if argv[:1] == ["report"]:  # slimkit report <sweep dir>: table, Pareto plots, HTML
            from slimkit.sweeps import report_command

            return report_command(argv[1:])
        check_backend_overrides(argv, registry)
        from slimkit.pipeline.config import register_configs
        from slimkit.sweeps import validate_sweep

        register_configs(registry)
        if not validate_sweep(argv, registry):  # a multirun: every combination's stage configs, before launch
            overrides = [a for a in argv if "=" in a and not a.startswith("-")]
            if len(overrides) == len([a for a in argv if not a.startswith("-")]):  # plain overrides only
                from slimkit.deploy import resolve_exporters
                from slimkit.pipeline import resolve_stages
                from slimkit.pipeline.config import check_composes

                settings = check_composes(overrides, registry)
                resolve_stages(settings, registry)  # unknown keys, bad values: now, before Hydra makes the run folder
                resolve_exporters(settings, registry)  # the same for the exporters (as a sweep's check does)
    except SlimkitError as exc:
        print(f"slimkit: error: {exc}", file=sys.stderr)
        return 2
    from slimkit.core.processes import is_main_process, num_processes
    from slimkit.launch import requested_cpu_processes, run_workers

    workers = requested_cpu_processes()
    if workers:  # accelerate launch --cpu --num_processes N started only this process: start the N workers
        return run_workers(argv, workers)
    if num_processes() > 1 and any(a in ("-m", "--multirun") or a.startswith("hydra.mode=") for a in argv):
        print("slimkit: error: a sweep (-m) cannot run data-parallel: launch each job with accelerate, or run the "
              "sweep without it", file=sys.stderr)
        return 2
    if not is_main_process():  # a data-parallel worker: its Hydra folder is scratch, the main process writes the run
        import tempfile

        with tempfile.TemporaryDirectory(prefix="slimkit-worker-") as scratch:
            kept = [a for a in argv if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
            sys.argv = [sys.argv[0], *kept, f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
            _hydra_app()
        return 0
    sys.argv = [sys.argv[0], *argv]
    _hydra_app()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
