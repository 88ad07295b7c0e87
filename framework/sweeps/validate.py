"""Pre-launch validation of every combination of a sweep."""

from __future__ import annotations

import copy
import itertools
import logging
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

from slimkit.core.errors import SlimkitError
from slimkit.sweeps.jobs import check_sweep_settings
from slimkit.sweeps.naming import KINDS, SweepError, override_key

log = logging.getLogger("slimkit.sweeps")

#: Hydra flags that take a value
_FLAGS_WITH_VALUE = {"-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--cfg", "-c",
                     "--package", "-p", "--info", "--experimental-rerun"}
#: validate at most this many combinations before launching (each is one config composition)
MAX_VALIDATED = 512


def _is_multirun_argv(argv: Sequence[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in argv) or any(a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in argv)


def _plain_overrides(argv: Sequence[str]) -> list[str] | None:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _FLAGS_WITH_VALUE:
            if arg in ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir"):
                return None  # another config tree: nothing to validate against
            skip = arg not in ("--info",)
            continue
        if arg.startswith("-"):
            continue
        out.append(arg)
    return out


def _values(override: Any) -> list[str]:
    """The values a sweep override takes (an interval contributes its two ends)."""
    if override.is_interval_sweep():
        sweep = override.value()
        return [repr(sweep.start), repr(sweep.end)]
    return list(override.sweep_string_iterator())


def expand_sweep(overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None = None
                 ) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Split command-line overrides into fixed ones and sweep dimensions ``(key, [override, ...])``;
    ``sweeper_params`` (``hydra.sweeper.params`` of a preset) add dimensions the command line does
    not override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    fixed, dims = [], []
    seen = set()
    params = dict(sweeper_params or {})
    prefix = "hydra.sweeper.params."
    for text in overrides:  # hydra.sweeper.params.<key>=... on the command line edits the search space
        key, _, value = text.partition("=")
        if key.startswith(prefix):  # Hydra needs these quoted: hydra.sweeper.params.x='choice(1,2)'
            params[key[len(prefix):]] = value[1:-1] if value[:1] in "'\"" and value[-1:] == value[:1] else value
    for text in overrides:
        if text.startswith(prefix) or override_key(text).startswith("hydra"):
            continue
        ov = parser.parse_override(text)
        if ov.is_sweep_override():
            key = ov.get_key_element()
            dims.append((key, [f"{key}={v}" for v in _values(ov)]))
            seen.add(key.lstrip("+~"))
        else:
            fixed.append(text)
            seen.add(ov.get_key_element().lstrip("+~"))
    for key, value in params.items():
        if key in seen:
            continue
        ov = parser.parse_override(f"{key}={value}")
        if ov.is_sweep_override():
            dims.append((key, [f"{key}={v}" for v in _values(ov)]))
    return fixed, dims


def validate_sweep(argv: Sequence[str], registry: Any = None) -> int:
    """Before a multirun launches, compose the config of every combination of its sweep values
    (command line and ``hydra.sweeper.params``; an Optuna interval is checked at both ends) and
    resolve its stages (backend names, dependencies, config ranges) without loading a model.

    A sweep value that fails in every combination it appears in raises :class:`SweepError` naming
    it and the underlying error; combinations that fail while their values work elsewhere (say
    ``quantizer.bits=3`` with one of two backends) are logged and will be recorded as failed jobs.
    Returns the number of combinations checked (0 when this is not a multirun)."""
    if not _is_multirun_argv(argv):
        return 0
    overrides = _plain_overrides(argv)
    if overrides is None:
        return 0
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from slimkit.core.registry import default_registry
    from slimkit.deploy import resolve_exporters
    from slimkit.pipeline import resolve_stages
    from slimkit.pipeline.config import explain_compose_error

    registry = registry or default_registry()

    def compose_one(items: list[str], hydra_cfg: bool = False) -> Any:
        task = [o for o in items if not override_key(o).startswith("hydra")]
        hydra_items = [o for o in items if override_key(o).startswith("hydra")] if hydra_cfg else []
        return compose(config_name="config", overrides=task + hydra_items, return_hydra_config=hydra_cfg)

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    groups = _config_groups()
    composed: dict[tuple[str, ...], Any] = {}

    def structural(item: str) -> bool:  # selects or adds/removes config (groups): needs a composition
        key = parser.parse_override(item).get_key_element()
        return key[:1] in "+~" or "/" in key or key in groups or key.startswith("hydra")

    def check(items: list[str]) -> str | None:
        # one composition per combination of group choices; plain values are set on a copy
        try:
            shape = tuple(o for o in items if structural(o))
            if shape not in composed:
                composed[shape] = compose_one(list(shape))
            cfg = copy.deepcopy(composed[shape])
            for item in items:
                if not structural(item):
                    ov = parser.parse_override(item)
                    OmegaConf.update(cfg, ov.key_or_group, ov.value(), merge=False)
            settings = OmegaConf.to_container(cfg, resolve=True)
            check_sweep_settings(settings.get("sweep") or {}, (settings.get("eval") or {}).get("tasks"))
            resolve_stages(settings, registry)
            resolve_exporters(settings, registry)  # exporter=... axes: names, runtimes, formats, model/writer
        except SlimkitError as exc:
            return str(exc)
        except (HydraException, OmegaConfBaseException) as exc:
            return str(explain_compose_error(exc, items, registry))
        return None

    with initialize_config_module(config_module="slimkit.conf", version_base="1.3"):
        fixed_only = [o for o in overrides if not o.startswith("hydra.sweeper.params.") and not _parse_is_sweep(o)]
        try:
            base = compose_one(fixed_only, hydra_cfg=True)
            node = base.hydra.sweeper.get("params")
            params = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else {}
        except (HydraException, OmegaConfBaseException) as exc:
            raise SweepError(f"the sweep's fixed overrides do not compose: {exc}".splitlines()[0]) from None
        fixed, dims = expand_sweep(overrides, params)
        combos = list(itertools.islice(itertools.product(*[values for _, values in dims]), MAX_VALIDATED))
        results = [(combo, check(fixed + list(combo))) for combo in combos]
    failures = [(c, e) for c, e in results if e]
    if failures and len(failures) == len(results):
        combo, error = failures[0]
        raise SweepError(f"no combination of this sweep can run, e.g. [{' '.join(combo) or 'no sweep values'}]: {error}")
    for _, values in dims:
        for value in values:
            with_it = [(c, e) for c, e in results if value in c]
            if with_it and all(e for _, e in with_it):
                raise SweepError(f"sweep value {value} fails in every combination it appears in "
                                 f"({len(with_it)}), before any job launched: {with_it[0][1]}")
    for combo, error in failures:
        log.warning("sweep combination [%s] will fail (recorded as a failed job): %s", " ".join(combo), error)
    if len(combos) == MAX_VALIDATED:
        log.warning("validated the first %d combinations of the sweep only", MAX_VALIDATED)
    return len(combos)


def _config_groups() -> set[str]:
    from importlib import resources

    root = resources.files("slimkit.conf")
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")} | set(KINDS)


def _parse_is_sweep(text: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(text).is_sweep_override()


