"""The report of ``optkit optimize``: the Pareto front (latency against accuracy, and size) as a table
and a plot, every candidate with its fate, in Markdown and HTML, and ``optimize.json``."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from optkit.files import atomic_write_bytes, atomic_write_text
from optkit.optimize.pareto import pareto_front
from optkit.optimize.search import Candidate, OptimizeResult
from optkit.reporting.plots import PlotsUnavailable, figure_png, pyplot

__all__ = ["write_optimize_report", "front_of", "size_front_of"]

_HEADER = (
    "candidate",
    "passes",
    "status",
    "{accuracy}",
    "Δ points",
    "MACs",
    "size KB",
    "runtime",
    "p50 ms",
    "speed-up [interval]",
    "pipeline",
)


def front_of(result: OptimizeResult) -> list[Candidate]:
    """The timed points (the baseline included) no other beats on both latency and accuracy."""
    points = [result.baseline, *(c for c in result.candidates if c.status == "timed")]
    return pareto_front(points, [(lambda c: c.p50_ms, "min"), (lambda c: c.top1, "max")])


def size_front_of(result: OptimizeResult) -> list[Candidate]:
    """The measured points no other beats on both size and accuracy."""
    points = [result.baseline, *(c for c in result.candidates if c.status in ("timed", "measured"))]
    return pareto_front(points, [(lambda c: c.size_bytes, "min"), (lambda c: c.top1, "max")])


def _accuracy(result: OptimizeResult) -> str:
    """What the accuracy figures are: top-1 on labeled data, else top-1 agreement with the eager model."""
    return "top-1" if result.baseline.judged_by == "top-1" else "agreement with the eager model"


def _points(result: OptimizeResult) -> str:
    """The budget in points: ``1 point``, ``0.5 points``."""
    points = result.spec.max_accuracy_drop * 100
    return f"{points:g} point{'' if points == 1 else 's'}"


def _speedup(c: Candidate) -> str:
    figure = c.speedup or {}
    if figure.get("value") is None:
        return "–"
    return f"{figure['value']:.2f}× [{figure.get('low', float('nan')):.2f}, {figure.get('high', float('nan')):.2f}]"


def _row(c: Candidate, result: OptimizeResult, folder: Path) -> list[str]:
    base = result.baseline.top1
    drop = f"{(base - c.top1) * 100:+.2f}" if base is not None and c.top1 is not None else "–"
    pipeline = str(Path(c.pipeline_file).relative_to(folder)) if c.pipeline_file else "–"
    return [
        c.name,
        " → ".join(step.pass_name for step in c.chain) or "(eager model)",
        c.status + (f": {c.note}" if c.note else ""),
        f"{c.top1:.2%}" if c.top1 is not None else "–",
        drop,
        f"{c.macs:,}" if c.macs is not None else "–",
        f"{c.size_bytes / 1024:.1f}" if c.size_bytes is not None else "–",
        str(c.metrics.get("runtime") or "–"),
        f"{c.p50_ms:.4f}" if c.p50_ms is not None else "–",
        _speedup(c),
        pipeline,
    ]


def _plot(result: OptimizeResult) -> bytes | None:
    """Latency against top-1 of every timed point (marker size: file size), the front joined, each
    point's median interval as an error bar."""
    points = [result.baseline, *(c for c in result.candidates if c.status == "timed")]
    figures = [(p, p.p50_ms, p.top1) for p in points if p.p50_ms is not None and p.top1 is not None]
    if len(figures) < 2:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    largest = max(p.size_bytes or 1 for p, _, _ in figures)
    named = {id(c) for c in front_of(result)} | {id(result.baseline)}  # the others' labels would pile up
    for p, p50, top1 in figures:
        interval = (p.latency_ms or {}).get("p50_interval") or {}
        low, high = interval.get("low", p50), interval.get("high", p50)
        color = "tab:red" if p is result.chosen else "tab:gray" if p is result.baseline else "tab:blue"
        size = 30 + 120 * (p.size_bytes or 0) / largest
        ax.errorbar(p50, top1 * 100, xerr=[[p50 - low], [high - p50]], fmt="none", ecolor=color, alpha=0.6)
        ax.scatter([p50], [top1 * 100], s=size, color=color, alpha=0.8, zorder=3)
        if id(p) in named:
            ax.annotate(p.name, (p50, top1 * 100), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted(front_of(result), key=lambda c: c.p50_ms or 0)
    ax.plot([c.p50_ms for c in front], [(c.top1 or 0) * 100 for c in front], "--", color="tab:green", label="Pareto front")
    if result.baseline.top1 is not None:
        floor = (result.baseline.top1 - result.spec.max_accuracy_drop) * 100
        ax.axhline(
            floor,
            color="tab:orange",
            linestyle=":",
            label=f"accuracy budget ({_points(result)} of {_accuracy(result)})",
        )
    ax.set(xscale="log", xlabel="p50 latency (ms, log; bars: 95% interval of the median)", ylabel=f"{_accuracy(result)} on data.eval (%)")
    ax.set_title("optkit optimize: latency against accuracy (marker size: file size; red: chosen)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return figure_png(fig)


def _summary_lines(result: OptimizeResult) -> list[str]:
    chosen = result.chosen
    lines = [
        f"Budget {result.spec.budget_minutes:g} min, used {result.seconds / 60:.1f} min · target {result.spec.target} · "
        f"runtime {result.spec.runtime} · at most {_points(result)} of {_accuracy(result)} lost · "
        f"executor {result.spec.executor}",
        f"Stages reused from the cache: {result.stages_reused} · computed: {result.stages_computed}"
        + (f" · cache {result.cache_dir}" if result.cache_dir else " · cache off"),
    ]
    if chosen is not None:
        lines.append(
            f"Chosen: **{chosen.name}** — {_accuracy(result)} {chosen.top1:.2%} (baseline {result.baseline.top1:.2%}), speed-up over the eager "
            f"baseline {_speedup(chosen)}, side by side. Reproduce: `optkit run chosen.yaml`."
        )
    else:
        lines.append("Chosen: none — no candidate was timed within the accuracy budget; the eager model stays the best.")
    return lines


def _header(result: OptimizeResult) -> tuple[str, ...]:
    return tuple(h.format(accuracy=_accuracy(result)) for h in _HEADER)


def _table(rows: list[list[str]], header: tuple[str, ...]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows),
    ]


def render_markdown(result: OptimizeResult, plot: str | None) -> str:
    folder = result.output
    lines = ["# optkit optimize", "", *(f"{line}  " for line in _summary_lines(result)), ""]
    lines += ["## Pareto front: latency against accuracy", ""]
    lines += _table([_row(c, result, folder) for c in sorted(front_of(result), key=lambda c: c.p50_ms or 0)], _header(result))
    if plot:
        lines += ["", f"![latency against accuracy]({plot})"]
    lines += ["", "## Pareto front: size against accuracy", ""]
    lines += _table([_row(c, result, folder) for c in sorted(size_front_of(result), key=lambda c: c.size_bytes or 0)], _header(result))
    lines += ["", "## Every candidate", ""]
    lines += _table([_row(c, result, folder) for c in [result.baseline, *result.candidates]], _header(result))
    if result.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in result.notes)]
    lines += [
        "",
        "Speed-ups are over the eager baseline, timed side by side in one round-robin loop (median of the per-round ratios, "
        "95% interval widened by the run-to-run margin). Each pipeline file reproduces its point with `optkit run`.",
    ]
    return "\n".join(lines) + "\n"


def render_html(result: OptimizeResult, png: bytes | None) -> str:
    folder = result.output

    def table(rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in _header(result))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>optkit optimize</title>"]
    parts.append("<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;font-size:.85em}")
    parts.append("td,th{border:1px solid #ccc;padding:3px 8px}th{background:#f3f3f3}img{max-width:100%}</style></head><body>")
    parts.append("<h1>optkit optimize</h1>")
    parts += [f"<p>{html.escape(line.replace('**', '').replace('`', ''))}</p>" for line in _summary_lines(result)]
    parts.append("<h2>Pareto front: latency against accuracy</h2>")
    parts.append(table([_row(c, result, folder) for c in sorted(front_of(result), key=lambda c: c.p50_ms or 0)]))
    if png:
        parts.append(f"<img alt='latency against accuracy' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append("<h2>Pareto front: size against accuracy</h2>")
    parts.append(table([_row(c, result, folder) for c in sorted(size_front_of(result), key=lambda c: c.size_bytes or 0)]))
    parts.append("<h2>Every candidate</h2>")
    parts.append(table([_row(c, result, folder) for c in [result.baseline, *result.candidates]]))
    if result.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in result.notes) + "</ul>")
    parts.append("</body></html>")
    return "".join(parts)


def write_optimize_report(result: OptimizeResult) -> dict[str, Path]:
    """Write ``optimize.json``, ``report.md``, ``report.html`` and ``pareto.png`` into the search folder.

    Returns:
        What was written: ``json``, ``markdown``, ``html`` and (with matplotlib and two timed points) ``plot``.
    """
    folder = result.output
    written = {"json": folder / "optimize.json", "markdown": folder / "report.md", "html": folder / "report.html"}
    try:
        png = _plot(result)
    except PlotsUnavailable:
        png = None
    if png is not None:
        written["plot"] = folder / "pareto.png"
        atomic_write_bytes(written["plot"], png)
    data: dict[str, Any] = result.to_dict()
    data["pareto_front"] = [c.name for c in front_of(result)]
    data["size_front"] = [c.name for c in size_front_of(result)]
    atomic_write_text(written["json"], json.dumps(data, indent=1, allow_nan=False, default=str))
    atomic_write_text(written["markdown"], render_markdown(result, "pareto.png" if png is not None else None))
    atomic_write_text(written["html"], render_html(result, png))
    return written
