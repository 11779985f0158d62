"""Reporting: a run's report as tables (console, Markdown), and comparisons of several runs
(Markdown, a self-contained HTML page, plots), written atomically."""

from optkit.reporting.console import print_report, render_info
from optkit.reporting.markdown import render_comparison_markdown, render_markdown
from optkit.reporting.runs import COMPARISON_KIND, ComparedRun, load_runs
from optkit.reporting.tables import (
    COLUMNS,
    DATA_COLUMNS,
    final_speedup,
    final_speedup_figure,
    format_count,
    format_speedup,
    noise_warning,
    speedup_table,
    stage_rows,
    weights_line,
    weights_partly_loaded,
)
from optkit.reporting.writing import PLOT_FILES, report_json, write_comparison_report, write_run_report

__all__ = [
    "COLUMNS",
    "DATA_COLUMNS",
    "format_count",
    "format_speedup",
    "noise_warning",
    "stage_rows",
    "final_speedup",
    "final_speedup_figure",
    "speedup_table",
    "weights_line",
    "weights_partly_loaded",
    "render_markdown",
    "render_comparison_markdown",
    "print_report",
    "render_info",
    "COMPARISON_KIND",
    "ComparedRun",
    "load_runs",
    "PLOT_FILES",
    "report_json",
    "write_run_report",
    "write_comparison_report",
]
