"""The comparison of several runs as one self-contained HTML page (plots embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING

from optkit.reporting.tables import (
    comparison_columns,
    comparison_note,
    comparison_rows,
    environment_groups,
    environment_text,
    speedup_table,
)
from optkit.results import ComparisonMeta

if TYPE_CHECKING:
    from optkit.results import ComparedRun

__all__ = ["render_html"]


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


def render_html(runs: list[ComparedRun], meta: ComparisonMeta | None = None, images: dict[str, bytes] | None = None) -> str:
    """The comparison as one self-contained HTML page (plots embedded as base64 PNG data URIs).

    Args:
        runs: the runs, in the order to show them.
        meta: as for :func:`optkit.reporting.writing.write_comparison_report`.
        images: caption → PNG bytes.
    """
    meta = meta or ComparisonMeta()
    title = html.escape(meta.title or "optkit comparison")
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_CSS}</style></head><body><h1>{title}</h1>"
    ]
    if meta.command:
        parts.append(f"<p>Reproduce with:</p><pre>{html.escape(meta.command)}</pre>")
    parts.append("<h2>Environment</h2><ul>")
    for env, count in environment_groups(runs):
        text = html.escape(environment_text(env)).replace("**", "")
        parts.append(f"<li>{text} ({count} runs)</li>")
    extra = " · ".join(f"{key} {value}" for key, value in (("created", meta.created), ("executor", meta.executor)) if value)
    parts += [f"<li>{html.escape(extra)}</li>"] if extra else []
    parts += [f"<li>{html.escape(str(note))}</li>" for note in meta.notes or []]
    failed = [run for run in runs if run.report.status != "ok"]
    parts.append(f"</ul><p class='note'>{html.escape(comparison_note(runs))}</p>")
    if runs:
        header, rows = speedup_table(runs)
        parts.append("<h2>Speed-up of each pipeline (last stage vs baseline, with its interval)</h2>" + _table(header, rows))
    for caption, png in (images or {}).items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>")
    columns = comparison_columns(runs)
    rows = [[row[c] for c in columns] for row in comparison_rows(runs)]
    parts.append("<h2>Every stage</h2>" + _table(columns, rows, status_column=columns.index("status")))
    if failed:
        parts.append("<h2>Errors</h2><ul>")
        parts += [
            f"<li><b>{html.escape(run.model)} / {html.escape(run.pipeline)}</b>: "
            f"<pre>{html.escape(run.report.error or run.report.status)}</pre></li>"
            for run in failed
        ]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
