"""Rendering a sweep: markdown, CSV, JSON, Pareto plots, a self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from slimkit.core.artifact import atomic_write_text
from slimkit.sweeps.aggregate import Job, SweepResult, collect
from slimkit.sweeps.naming import KINDS, OUTPUTS

log = logging.getLogger("slimkit.sweeps")

HEADERS = ["job", "status", "pruner", "sparsity", "achieved sparsity", "distiller", "quantizer", "bits", "bits/weight",
           "other overrides", "perplexity", "quality %", "size MB", "size ×", "decode ×", "prefill ×",
           "timed", "feasible", "frontier", "objective", "error"]
#: task columns (one per task any job scored) go after this column
TASKS_AFTER = HEADERS.index("quality %")


def headers(result: SweepResult) -> list[str]:
    """The sweep table's columns: :data:`HEADERS` with one column per task (its final score)."""
    return HEADERS[:TASKS_AFTER + 1] + result.tasks + HEADERS[TASKS_AFTER + 1:]


def quality_label(name: str) -> str:
    """How a quality measure reads in the report (``perplexity`` or ``task:<name>``)."""
    task = name.split(":", 1)[1] if name.startswith("task:") else None
    return f"retained {task} score (final / baseline)" if task else "baseline perplexity / perplexity"


def _fmt(value: Any, spec: str = "{:.3g}") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return spec.format(value)
    return str(value)


def table_rows(result: SweepResult) -> list[list[str]]:
    """The sweep table as rows of strings (same columns as :func:`headers`)."""
    rows = []
    tasks = result.tasks
    for j in result.jobs:
        frontier = "/".join(n for n, on in (("size", j.pareto_size), ("speed", j.pareto_speed)) if on)
        rows.append([
            j.job, j.status, _fmt(j.backends.get("pruner")), _fmt(j.sparsity), _fmt(j.achieved_sparsity, "{:.3f}"),
            _fmt(j.backends.get("distiller")), _fmt(j.backends.get("quantizer")), _fmt(j.bits),
            _fmt(j.bits_per_weight, "{:.2f}"), " ".join(j.other_overrides) or "–",
            _fmt(j.perplexity, "{:.2f}"), _fmt(None if j.quality is None else 100 * j.quality, "{:.1f}"),
            *(_fmt(j.accuracy.get(t), "{:.3f}") for t in tasks), _fmt(j.size_mb, "{:.3f}"),
            _fmt(j.size_ratio, "{:.2f}"), _fmt(j.speed_ratio, "{:.2f}"), _fmt(j.prefill_ratio, "{:.2f}"),
            _fmt(j.timing), _fmt(j.feasible), frontier or "–", _fmt(j.objective, "{:.4g}"), (j.error or "").splitlines()[0][:200] if j.error else "",
        ])
    return rows


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: SweepResult) -> str:
    """The sweep as a markdown page: summary, best feasible configuration, frontier, table."""
    lines = [f"# slimkit sweep: {result.sweep_dir}", "", *summary_lines(result), "",
             "| " + " | ".join(headers(result)) + " |", "|" + "---|" * len(headers(result))]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in table_rows(result)]
    return "\n".join(lines) + "\n"


def _describe(job: Job) -> str:
    if job.config_overrides:
        text = " ".join(job.config_overrides)
    else:
        parts = [f"{k}={v}" for k, v in job.backends.items() if v]
        parts += [f"sparsity={job.sparsity}"] if job.sparsity is not None else []
        parts += [f"bits={job.bits}"] if job.bits is not None else []
        text = " ".join(parts)
    metrics = [f"ppl {job.perplexity:.2f}" if job.perplexity is not None else None,
               f"quality {100 * job.quality:.1f}%" if job.quality is not None else None,
               f"{job.size_mb:.3f} MB" if job.size_mb is not None else None,
               f"decode ×{job.speed_ratio:.2f}" if job.speed_ratio is not None else None]
    return f"{text} ({', '.join(m for m in metrics if m)})"


def summary_lines(result: SweepResult) -> list[str]:
    """Counts, baseline, best feasible configuration and the two frontiers, as markdown bullets."""
    counts: dict[str, int] = {}
    for j in result.jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    lines = [f"- jobs: {len(result.jobs)} (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")"]
    for model, base in result.baselines.items():
        size = base.get("size_bytes")
        lines.append(f"- baseline ({model}, fp32): perplexity {_fmt(base.get('perplexity'), '{:.2f}')}, "
                     f"{_fmt(size / 1e6 if size else None, '{:.3f}')} MB")
    floor = result.min_quality
    bound = f" (perplexity ≤ baseline/{floor:g})" if result.quality_name == "perplexity" else ""
    lines.append(f"- constraint: quality = {quality_label(result.quality_name)} ≥ {floor:.2f}{bound}; "
                 f"objective: minimise {result.objective_name}")
    best = result.best_feasible
    lines.append("- best feasible: " + (_describe(best) if best else "none (no completed job meets the constraint)"))
    for axis, label in (("size", "size–quality"), ("speed", "speed–quality")):
        front = result.frontier(axis)
        lines.append(f"- {label} frontier: " + ("; ".join(_describe(j) for j in front) if front else "–"))
    if isinstance(result.optimization, Mapping) and result.optimization.get("best_params") is not None:
        lines.append(f"- optuna best (penalised objective {result.optimization.get('best_value')}): "
                     f"{result.optimization.get('best_params')}")
    failed = [j for j in result.jobs if j.status != "ok"]
    for j in failed:
        lines.append(f"- {j.status}: {j.job}: {(j.error or '').splitlines()[0] if j.error else ''}")
    return lines


def write_csv(result: SweepResult, path: Path) -> None:
    """One CSV row per job with raw numbers (not formatted)."""
    fields = ["job", "status", "pruner", "sparsity", "achieved_sparsity", "distiller", "quantizer", "bits",
              "bits_per_weight", "other_overrides", "perplexity", "quality", "accuracy", "size_mb", "size_ratio",
              "speed_ratio", "prefill_ratio", "timing", "feasible", "pareto_size", "pareto_speed", "objective", "exporter", "deployments", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for j in result.jobs:
        row = j.as_dict()
        writer.writerow({**{k: row.get(k) for k in fields}, **{k: j.backends.get(k) for k in KINDS},
                         "other_overrides": " ".join(j.other_overrides), "accuracy": json.dumps(j.accuracy) if j.accuracy else "",
                         "exporter": " ".join(d["exporter"] for d in j.deployments),
                         "deployments": json.dumps(j.deployments) if j.deployments else "",
                         "error": (j.error or "").splitlines()[0] if j.error else ""})
    atomic_write_text(path, buffer.getvalue())


def plot_pareto(result: SweepResult, axis: str, path: Path) -> None:
    """Quality (% of baseline) against size (MB) or decode speed (× baseline): every completed job,
    the frontier joined and ringed, the baseline as a star and the quality floor dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    attr, flag = ("size_mb", "pareto_size") if axis == "size" else ("speed_ratio", "pareto_speed")
    xlabel = "artifact size (MB)" if axis == "size" else "decode speed (× baseline, same process, alternating)"
    fig = Figure(figsize=(7.5, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    points = [j for j in result.ok if getattr(j, attr) is not None and j.quality is not None]
    for feasible, colour, label in ((True, "tab:green", "feasible"), (False, "tab:red", "below the quality floor")):
        chosen = [j for j in points if bool(j.feasible) == feasible]
        if chosen:
            ax.scatter([getattr(j, attr) for j in chosen], [100 * j.quality for j in chosen], c=colour, s=36,
                       label=label, zorder=3)
    front = sorted((j for j in points if getattr(j, flag)), key=lambda j: getattr(j, attr))
    if front:
        ax.plot([getattr(j, attr) for j in front], [100 * j.quality for j in front], "-", color="black", lw=1.2,
                drawstyle="steps-post" if axis == "size" else "steps-pre", zorder=2, label="Pareto frontier")
        ax.scatter([getattr(j, attr) for j in front], [100 * j.quality for j in front], s=140, facecolors="none",
                   edgecolors="black", linewidths=1.4, zorder=4)
    for j in points:
        ax.annotate(j.label if len(j.label) <= 40 else j.label[:38] + "…", (getattr(j, attr), 100 * j.quality),
                    fontsize=6, xytext=(4, 3), textcoords="offset points")
    for model, base in result.baselines.items():
        bx = (base.get("size_bytes") or 0) / 1e6 if axis == "size" else 1.0
        if axis == "size" and not base.get("size_bytes"):
            continue
        ax.scatter([bx], [100.0], marker="*", s=220, c="tab:blue", zorder=5, label=f"baseline {model} (fp32)")
    ax.axhline(100 * result.min_quality, color="tab:gray", ls="--", lw=1,
               label=f"quality floor {100 * result.min_quality:.0f}%")
    if axis == "speed":
        ax.axvline(1.0, color="tab:blue", ls=":", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"quality (% of baseline: {quality_label(result.quality_name)})")
    ax.set_title(f"{'size' if axis == 'size' else 'speed'} vs quality — {len(points)} completed job(s)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def render_html(result: SweepResult, plots: Mapping[str, Path]) -> str:
    """One self-contained page: summary, both plots embedded as base64 PNG, the table."""
    esc = html.escape
    images = "".join(
        f'<figure><img alt="{esc(name)} Pareto plot" src="data:image/png;base64,'
        f'{base64.b64encode(Path(p).read_bytes()).decode()}"><figcaption>{esc(name)} vs quality</figcaption></figure>'
        for name, p in plots.items())
    head = "".join(f"<th>{esc(h)}</th>" for h in headers(result))
    body = ""
    for job, row in zip(result.jobs, table_rows(result)):
        css = job.status + (" frontier" if job.pareto_size or job.pareto_speed else "")
        body += f'<tr class="{css}">' + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>\n"
    summary = "".join(f"<li>{esc(line[2:])}</li>" for line in summary_lines(result))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>slimkit sweep: {esc(str(result.sweep_dir))}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f0f0f0; }}
tr.failed, tr.missing, tr.corrupt, tr.running {{ background: #fde8e8; }}
tr.frontier td:first-child {{ font-weight: bold; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }}
img {{ max-width: 640px; border: 1px solid #ddd; }}
td:first-child {{ max-width: 22em; word-break: break-all; }}
</style></head>
<body>
<h1>slimkit sweep</h1>
<p><code>{esc(str(result.sweep_dir))}</code></p>
<ul>{summary}</ul>
<p id="plot-check">plots not rendered (needs a browser that runs the page's script)</p>
{images}
<h2>Jobs</h2>
<table id="jobs"><thead><tr>{head}</tr></thead><tbody>
{body}</tbody></table>
<script>
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.getElementById("plot-check").textContent = ok + "/" + imgs.length + " plots rendered";
}});
</script>
</body></html>
"""


def write_sweep_report(sweep_dir: str | Path, min_quality: float | None = None,
                       objective_name: str | None = None) -> tuple[SweepResult, dict[str, Path]]:
    """Aggregate a sweep folder and write sweep.md, sweep.csv, sweep.json, the two Pareto PNGs and
    sweep.html into it. Returns the result and the written paths."""
    result = collect(sweep_dir, min_quality, objective_name)
    root = result.sweep_dir
    paths = {k: root / v for k, v in OUTPUTS.items()}
    atomic_write_text(paths["markdown"], render_markdown(result))
    write_csv(result, paths["csv"])
    atomic_write_text(paths["json"], json.dumps(result.as_dict(), indent=2, default=str))
    plot_pareto(result, "size", paths["size_plot"])
    plot_pareto(result, "speed", paths["speed_plot"])
    atomic_write_text(paths["html"], render_html(result, {"size": paths["size_plot"], "speed": paths["speed_plot"]}))
    return result, paths


