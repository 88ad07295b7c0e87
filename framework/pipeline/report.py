"""Reports: ``report.json`` (machine-readable), ``report.md`` and the console summary table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from slimkit.core.artifact import atomic_write_text

COLUMNS = [  # (key, header, format)
    ("perplexity", "perplexity", "{:.2f}"),
    ("size_bytes", "size MB", "{:.1f}"),
    ("parameters", "params M", "{:.2f}"),
    ("nonzero_parameters", "nonzero M", "{:.2f}"),
    ("prefill_ms", "prefill ms", "{:.1f}"),
    ("decode_tokens_per_s", "decode tok/s", "{:.1f}"),
]
SCALE = {"size_bytes": 1e6, "parameters": 1e6, "nonzero_parameters": 1e6}


def _cell(metrics: Mapping[str, Any], key: str, fmt: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "–"
    return fmt.format(value / SCALE.get(key, 1))


def _task_cell(metrics: Mapping[str, Any], task: str, metric: str) -> str:
    value = ((metrics.get("tasks") or {}).get(task) or {}).get(metric)
    return "–" if value is None else f"{value:.3f}"


def markdown_table(rows: list[tuple[str, Mapping[str, Any]]], tasks: Mapping[str, str] | None = None) -> str:
    """A markdown table with one row per (label, metrics); ``tasks`` ({task: metric}) adds a column
    per task after perplexity, read from ``metrics["tasks"][task][metric]``."""
    tasks = dict(tasks or {})
    headers = [COLUMNS[0][1], *(f"{t} {m}" for t, m in tasks.items()), *(h for _, h, _ in COLUMNS[1:])]
    lines = ["| | " + " | ".join(headers) + " |", "|" + "---|" * (len(headers) + 1)]
    for label, metrics in rows:
        cells = [_cell(metrics, *COLUMNS[0][::2]), *(_task_cell(metrics, t, m) for t, m in tasks.items()),
                 *(_cell(metrics, k, f) for k, _, f in COLUMNS[1:])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    rows = [("baseline (fp32)", report["baseline"])]
    rows += [(f"after {s['kind']} {s['backend']}", s["metrics"]) for s in report["stages"]]
    rows.append(("final artifact", report["final"]))
    return rows


def render_markdown(report: Mapping[str, Any]) -> str:
    ratios = report.get("ratios", {})
    ratio_text = ", ".join(f"{k} ×{v:.2f}" for k, v in ratios.items()) or "–"
    model = report["model"]
    data = report["data"]
    threads = report["final"].get("threads")
    lines = [
        f"# slimkit report: {model['name']}",
        "",
        f"- model: {model['provenance']} ({model['parameters'] / 1e6:.1f}M parameters)",
        f"- data: {data['description']}; eval tokens {data['eval']['tokens']}, "
        f"calibration/train tokens {data['train']['tokens']} (disjoint)"
        + (f"; documents: eval {data['eval']['documents']}, train {data['train']['documents']} of {data['documents']}"
           if "documents" in data else ""),
        *(f"  - file `{f['path']}` ({f['bytes']} bytes, sha256 `{f['sha256']}`)"
          for f in (data.get("corpus") or {}).get("files", [])),
        "- stages: " + (" → ".join(f"{s['kind']} {s['backend']} ({s['distribution']} {s['version']}, "
                                    f"{s['seconds']} s)" for s in report["stages"]) or "none"),
        f"- ratios (baseline/final size, final/baseline speed and perplexity): {ratio_text}",
        _timing_line(report.get("timing"), threads),
        f"- achieved sparsity {report['final'].get('achieved_sparsity', 0):.3f} of the original Linear weights; "
        f"{report['final'].get('bits_per_weight', float('nan')):.2f} stored bits per original parameter",
        f"- artifact: `{report['artifact']}` (reload max |Δlogit| {report['final'].get('reload_max_abs_logit_diff', 0):.2g})",
        "",
        markdown_table(summary_rows(report), {name: t["metric"] for name, t in (report.get("tasks") or {}).items()}),
        "",
    ]
    if report.get("tasks"):
        lines += ["| task (lm-eval) | metric | examples | baseline | final | retained | source |", "|---|---|---|---|---|---|---|"]
        for name, t in report["tasks"].items():
            fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {name} | {t['metric']}{'' if t['higher_is_better'] else ' (lower is better)'} | "
                         f"{t.get('samples') or '–'} | {fmt(t['baseline'])} | {fmt(t['final'])} | {fmt(t['retained'])} | "
                         f"{t['source']} |")
        lines.append("")
    if report.get("deployments"):
        lines += deployments_table(report["deployments"], report["baseline"])
    return "\n".join(lines)


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _runtime_cell(deployment: dict) -> str:
    """``runtime version``, without repeating a name the version string already starts with."""
    runtime, version = str(deployment.get("runtime")), str(deployment.get("runtime_version", ""))
    return version if version.startswith(runtime) else f"{runtime} {version}".strip()


def deployments_table(deployments: list[Mapping[str, Any]], baseline: Mapping[str, Any]) -> list[str]:
    """Markdown lines: one row per export, measured inside its runtime."""
    tasks = sorted({t for d in deployments for t in (d.get("tasks") or {})})
    lines = ["## Deployments (each export measured inside its runtime)", "",
             "| exporter | runtime | format | size MB (×smaller) | perplexity (×fp32) | "
             + "".join(f"{t} acc (retained) | " for t in tasks) + "prefill × fp32 | decode × fp32 | processes |",
             "|" + "---|" * (8 + len(tasks))]
    for d in deployments:
        cells = [d["exporter"], _runtime_cell(d), str(d.get("format")),
                 f"{d['size_bytes'] / 1e6:.1f} ({_num(d.get('size_ratio'), '{:.1f}×')})",
                 f"{_num(d.get('perplexity'), '{:.2f}')} ({_num(d.get('perplexity_ratio'), '×{:.3f}')})"]
        for t in tasks:
            acc = (d.get("tasks") or {}).get(t) or {}
            cells.append(f"{_num(acc.get('final'), '{:.3f}')} ({_num(acc.get('retained'), '{:.1%}')})")
        cells += [_num(d.get("prefill_speedup"), "{:.2f}×"), _num(d.get("decode_speedup"), "{:.2f}×"),
                  str(len(d.get("processes") or []))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Speed: fresh processes that load only PyTorch fp32 and the export, timed alternately at "
              f"{baseline.get('threads', 1)} thread(s); the median over processes. Files: `deploy/<exporter>/`.", ""]
    return lines




def _timing_line(timing: Mapping[str, Any] | None, threads: Any) -> str:
    if not timing:
        return "- latency: not measured"
    if timing.get("condition") == "serving":
        p, d = timing["prefill_speedup"], timing["decode_speedup"]
        return (f"- latency: {timing['description']}, {timing['processes']} processes, {threads} torch thread(s): "
                f"prefill ×{p['median']:.2f} (×{p['min']:.2f}–{p['max']:.2f}), decode ×{d['median']:.2f} "
                f"(×{d['min']:.2f}–{d['max']:.2f})")
    return f"- latency: {timing['description']}, median of alternating runs, {threads} torch thread(s)"


def write_reports(report: Mapping[str, Any], output_dir: Path) -> None:
    """Write report.json and report.md and print the summary table."""
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "report.json", json.dumps(report, indent=2, default=str))
    text = render_markdown(report)
    atomic_write_text(output_dir / "report.md", text)
    print(text)
