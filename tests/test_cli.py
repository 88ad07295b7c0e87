"""The `slimkit` command as a user runs it (a subprocess, the installed plugins, real files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path



def slimkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimkit", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900)


def test_plugins_lists_kind_name_distribution_version_and_status():
    result = slimkit("plugins")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["kind", "name", "distribution", "version"]
    rows = {tuple(line.split()[:3]) for line in lines[1:]}
    assert ("quantizer", "quanto", "slimkit-quanto") in rows
    assert ("pruner", "magnitude", "slimkit-magnitude") in rows
    assert ("pruner", "random", "slimkit-example-random") in rows  # the third-party example


def test_help_lists_third_party_backends():
    result = slimkit("--help")
    assert result.returncode == 0, result.stderr
    pruner_line = next(line for line in result.stdout.splitlines() if line.startswith("pruner:"))
    assert "random" in pruner_line and "magnitude" in pruner_line


def test_unknown_backend_suggests_the_closest_installed_name():
    result = slimkit("quantizer=quantoo")
    assert result.returncode == 2
    assert "quantizer='quantoo'" in result.stderr and "Did you mean 'quanto'" in result.stderr
    assert "slimkit-quantoo" not in result.stderr  # never a made-up package name to pip install
    assert "Traceback" not in result.stderr


def test_out_of_range_value_is_a_clean_error(tmp_path):
    result = slimkit("experiment=tiny", "pruner.sparsity=1.5", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "pruner.sparsity=1.5" in result.stderr and "[0.0, 1.0)" in result.stderr
    assert not (tmp_path / "model").exists()


def test_a_bad_exporter_value_is_refused_before_hydra_makes_the_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    result = slimkit("experiment=tiny", "exporter=gguf", "exporter.gguf.weights=q3", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert "exporter.gguf.weights='q3' is not allowed" in result.stderr and "'q4_0'" in result.stderr
    assert "Traceback" not in result.stderr and not run_dir.exists()


def test_a_stage_set_to_null_says_how_to_drop_it(tmp_path):
    result = slimkit("experiment=tiny", "pruner=null", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "pruner=None is not allowed" in result.stderr and "write ~pruner instead of pruner=null" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "model").exists()


def test_third_party_plugin_selected_by_config_runs(tmp_path):
    result = slimkit("experiment=tiny", "pruner=random", "pruner.sparsity=0.2", "~quantizer", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    (stage,) = report["stages"]
    assert (stage["backend"], stage["distribution"]) == ("random", "slimkit-example-random")
    assert report["final"]["nonzero_parameters"] < report["baseline"]["nonzero_parameters"]


def test_multirun_sweeps_sparsity_and_bits(tmp_path):
    result = slimkit("-m", "experiment=tiny", "pruner=magnitude", "pruner.sparsity=0.25,0.5", "quantizer=quanto",
                     "quantizer.bits=4,8", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    reports = sorted(tmp_path.glob("*/report.json"))
    assert len(reports) == 4
    seen = set()
    for path in reports:
        report = json.loads(path.read_text())
        pruner, quantizer = report["stages"]
        seen.add((pruner["config"]["sparsity"], quantizer["config"]["bits"]))
        assert (path.parent / "model" / "slimkit.json").is_file()
    assert seen == {(0.25, 4), (0.25, 8), (0.5, 4), (0.5, 8)}


def test_unknown_key_lists_the_backends_valid_keys_before_anything_loads(tmp_path):
    result = slimkit("experiment=tiny", "quantizer=rtn", "quantizer.bitz=4", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "quantizer.bitz='4' is not allowed: expected a key of the quantizer 'rtn'" in result.stderr
    assert "bits, exclude, include, overrides" in result.stderr
    assert not (tmp_path / "model").exists()
