"""Writing reports: a run's ``report.json`` and ``report.md``, and the comparison of several runs
(``report.json``, ``report.md``, a self-contained ``report.html`` and ``plots/``), each file atomically.

Sweeps, the model-zoo benchmark and ``optkit report RUN_DIR...`` all write comparisons through
:func:`write_comparison_report`; the runner writes its report through :func:`write_run_report`
after every stage.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any

from optkit.files import atomic_write_bytes, atomic_write_text
from optkit.reporting.html import render_html
from optkit.reporting.markdown import render_comparison_markdown, render_markdown
from optkit.reporting.plots import PlotsUnavailable, latency_vs_gmacs_png, pass_speedups_png, stage_points
from optkit.results import ComparedRun, ComparisonMeta, ComparisonReport, RunReport, RunStatus

__all__ = ["PLOT_FILES", "report_json", "write_run_report", "write_comparison_report"]

log = logging.getLogger(__name__)


def report_json(data: dict[str, Any]) -> str:
    """A JSON document as the text of a ``report.json`` (indented).

    Raises:
        ValueError: ``data`` holds NaN or infinity (reports write them as null: :mod:`optkit.results`).
        TypeError: ``data`` holds a value that is not JSON.
    """
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def write_run_report(report: RunReport, folder: Path) -> None:
    """Write ``report.json`` and ``report.md`` of one run into ``folder``, each atomically."""
    atomic_write_text(Path(folder) / "report.json", report.to_json())
    atomic_write_text(Path(folder) / "report.md", render_markdown(report))


#: Caption → file name (under ``plots/``) of each plot.
PLOT_FILES = {
    "Latency against GMACs, every stage": "latency_vs_gmacs.png",
    "Speed-up of each pass over the stage before it": "speedup_per_pass.png",
}


def _render_plots(runs: list[ComparedRun]) -> dict[str, tuple[str, bytes]]:
    """Caption → (file name, PNG bytes) of the plots there is data for."""
    points = stage_points(runs)
    images = dict(zip(PLOT_FILES, (latency_vs_gmacs_png(points), pass_speedups_png(points)), strict=True))
    return {caption: (PLOT_FILES[caption], png) for caption, png in images.items() if png is not None}


def write_comparison_report(
    runs: list[ComparedRun],
    folder: Path,
    *,
    meta: dict[str, Any] | None = None,
    status: str = RunStatus.ok,
    plots: bool = True,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.html`` and ``plots/*.png`` into ``folder``, each atomically.

    Args:
        runs: the runs to compare, in the order to show them.
        folder: created if missing; files there of the same names are replaced.
        meta: ``title``, ``command``, ``executor``, ``notes`` ... (shown in the header and kept in report.json).
        status: ``running`` while a sweep goes on, then ``ok`` or ``failed``.
        plots: draw the plots. Without matplotlib (an extra) the reports are written without
            them, and their notes say why.

    Returns:
        File kind (``json``, ``markdown``, ``html`` and each plot's file name) → path.
    """
    folder = Path(folder)
    header = ComparisonMeta.model_validate({"created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), **(meta or {})})
    images: dict[str, tuple[str, bytes]] = {}
    if plots and runs:
        try:
            images = _render_plots(runs)
        except PlotsUnavailable as exc:
            log.warning("reports without plots: %s", exc)
            header.notes = [*(header.notes or []), f"No plots: {exc}."]
    written: dict[str, Path] = {}
    for name, png in images.values():
        written[name] = folder / "plots" / name
        atomic_write_bytes(written[name], png)
    document = ComparisonReport(status=RunStatus(status), meta=header, runs=runs)
    written["json"] = folder / "report.json"
    atomic_write_text(written["json"], document.to_json())
    markdown_plots = {caption: f"plots/{name}" for caption, (name, _) in images.items()}
    written["markdown"] = folder / "report.md"
    atomic_write_text(written["markdown"], render_comparison_markdown(runs, header, markdown_plots))
    written["html"] = folder / "report.html"
    atomic_write_text(written["html"], render_html(runs, header, {c: png for c, (_, png) in images.items()}))
    return written
