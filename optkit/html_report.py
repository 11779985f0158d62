"""The comparison report of several runs: ``report.json``, ``report.md``, PNG plots and a self-contained HTML page.

The HTML page embeds its plots as base64 ``data:`` URIs, so the one file can be mailed or opened
anywhere. Sweeps, the model-zoo benchmark and ``optkit report RUN_DIR...`` all write through
:func:`write_comparison_report`; :func:`load_runs` reads back run folders and comparison reports alike.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import logging
from pathlib import Path
from typing import Any

from optkit.atomic import atomic_write_bytes, atomic_write_text
from optkit.environment import optkit_version
from optkit.errors import PipelineError
from optkit.report import (
    ComparedRun,
    comparison_columns,
    comparison_note,
    comparison_rows,
    environment_groups,
    environment_text,
    render_comparison_markdown,
    speedup_table,
)
from optkit.results import SCHEMA_VERSION, RunReport

__all__ = ["COMPARISON_KIND", "PLOT_FILES", "write_comparison_report", "render_html", "load_runs"]

log = logging.getLogger(__name__)

#: ``kind`` of a comparison ``report.json`` (a run's report.json has none).
COMPARISON_KIND = "optkit-comparison"

#: Caption → file name (under ``plots/``) of each plot.
PLOT_FILES = {
    "Latency against GMACs, every stage": "latency_vs_gmacs.png",
    "Speed-up of each pass over the stage before it": "speedup_per_pass.png",
}


def _render_plots(runs: list[ComparedRun]) -> dict[str, tuple[str, bytes]]:
    """Caption → (file name, PNG bytes) of the plots there is data for."""
    from optkit.plots import latency_vs_gmacs_png, pass_speedups_png, stage_points

    points = stage_points(runs)
    images = dict(zip(PLOT_FILES, (latency_vs_gmacs_png(points), pass_speedups_png(points))))
    return {caption: (PLOT_FILES[caption], png) for caption, png in images.items() if png is not None}


def write_comparison_report(
    runs: list[ComparedRun],
    folder: Path,
    *,
    meta: dict[str, Any] | None = None,
    status: str = "ok",
    plots: bool = True,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.html`` and ``plots/*.png`` into ``folder``, each atomically.

    Args:
        runs: the runs to compare, in the order to show them.
        folder: created if missing; files there of the same names are replaced.
        meta: ``title``, ``command``, ``executor``, ``notes`` ... (shown in the header and kept in report.json).
        status: ``running`` while a sweep goes on, then ``ok`` or ``failed``.
        plots: draw the plots (needs matplotlib).

    Returns:
        File kind (``json``, ``markdown``, ``html`` and each plot's file name) → path.
    """
    folder = Path(folder)
    meta = {"created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), **(meta or {})}
    images = _render_plots(runs) if plots and runs else {}
    written: dict[str, Path] = {}
    for name, png in images.values():
        written[name] = folder / "plots" / name
        atomic_write_bytes(written[name], png)
    document = {
        "schema": SCHEMA_VERSION,
        "kind": COMPARISON_KIND,
        "optkit_version": optkit_version(),
        "status": status,
        "meta": meta,
        "runs": [run.to_dict() for run in runs],
    }
    written["json"] = folder / "report.json"
    atomic_write_text(written["json"], json.dumps(document, indent=2, default=str) + "\n")
    markdown_plots = {caption: f"plots/{name}" for caption, (name, _) in images.items()}
    written["markdown"] = folder / "report.md"
    atomic_write_text(written["markdown"], render_comparison_markdown(runs, meta, markdown_plots))
    written["html"] = folder / "report.html"
    atomic_write_text(written["html"], render_html(runs, meta, {c: png for c, (_, png) in images.items()}))
    return written


def _table(header: list[str] | tuple[str, ...], rows: list[list[str]], status_column: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        css = f' class="{html.escape(row[status_column])}"' if status_column is not None else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,td:nth-child(2),td:nth-child(3){text-align:left}
tr.failed td,tr.interrupted td{background:#fde8e8}tr.skipped td{color:#999}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:.9em}
"""


def render_html(runs: list[ComparedRun], meta: dict[str, Any] | None = None, images: dict[str, bytes] | None = None) -> str:
    """The comparison as one self-contained HTML page (plots embedded as base64 PNG data URIs).

    Args:
        runs: the runs, in the order to show them.
        meta: as for :func:`write_comparison_report`.
        images: caption → PNG bytes.
    """
    meta = meta or {}
    title = html.escape(meta.get("title") or "optkit comparison")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
             f"<style>{_CSS}</style></head><body><h1>{title}</h1>"]
    if meta.get("command"):
        parts.append(f"<p>Reproduce with:</p><pre>{html.escape(str(meta['command']))}</pre>")
    parts.append("<h2>Environment</h2><ul>")
    for env, count in environment_groups(runs):
        text = html.escape(environment_text(env)).replace("**", "")
        parts.append(f"<li>{text} ({count} runs)</li>")
    extra = " · ".join(f"{key} {meta[key]}" for key in ("created", "executor") if meta.get(key))
    parts += [f"<li>{html.escape(extra)}</li>"] if extra else []
    parts += [f"<li>{html.escape(str(note))}</li>" for note in meta.get("notes") or []]
    failed = [run for run in runs if run.report.status != "ok"]
    parts.append(f"</ul><p class='note'>{html.escape(comparison_note(runs))}</p>")
    if runs:
        header, rows = speedup_table(runs)
        parts.append("<h2>Speed-up of each pipeline (last stage vs baseline, p50)</h2>" + _table(header, rows))
    for caption, png in (images or {}).items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>")
    columns = comparison_columns(runs)
    rows = [[row[c] for c in columns] for row in comparison_rows(runs)]
    parts.append("<h2>Every stage</h2>" + _table(columns, rows, status_column=columns.index("status")))
    if failed:
        parts.append("<h2>Errors</h2><ul>")
        parts += [f"<li><b>{html.escape(run.model)} / {html.escape(run.pipeline)}</b>: "
                  f"<pre>{html.escape(run.report.error or run.report.status)}</pre></li>" for run in failed]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def load_runs(paths: list[Path]) -> list[ComparedRun]:
    """Runs from run folders, ``report.json`` files and comparison reports, in the order given.

    Raises:
        PipelineError: a path holds no report, or one that cannot be read.
    """
    runs: list[ComparedRun] = []
    for given in paths:
        path = Path(given)
        file = path / "report.json" if path.is_dir() else path
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PipelineError("no report.json here (expected a run folder, a sweep folder or a report.json)", str(path)) from None
        except (OSError, ValueError) as exc:
            raise PipelineError(f"cannot read report: {exc}", str(file)) from exc
        if not isinstance(data, dict) or not ("runs" in data or "stages" in data):
            raise PipelineError("not an optkit report (no 'stages' or 'runs')", str(file))
        if data.get("kind") == COMPARISON_KIND:
            runs += [ComparedRun.from_dict(entry) for entry in data.get("runs", [])]
        else:
            runs.append(ComparedRun(RunReport.from_dict(data), run_dir=str(file.parent)))
    return runs
