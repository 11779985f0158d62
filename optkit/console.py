"""What a person sees while a run goes: a progress line per stage, then the stage table (rich)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from optkit.hookspecs import hookimpl
from optkit.report import COLUMNS, stage_rows

if TYPE_CHECKING:
    from optkit.results import RunInfo, RunReport, StageResult

__all__ = ["ConsoleProgress", "print_report"]

_STYLE = {"ok": "green", "failed": "bold red", "interrupted": "yellow", "skipped": "dim"}


class ConsoleProgress:
    """A plugin (registered by the CLI) that shows each stage as it starts and finishes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status = None

    @hookimpl
    def optkit_stage_started(self, stage: str, index: int, run: RunInfo) -> None:
        self._status = self.console.status(f"[{index}/{run.stage_count - 1}] {stage} …")
        self._status.start()

    @hookimpl
    def optkit_stage_finished(self, result: StageResult, run: RunInfo) -> None:
        if self._status is not None:
            self._status.stop()
        style = _STYLE.get(result.status, "")
        latency = (result.metrics.get("latency_ms") or {}).get("p50")
        timing = f" · p50 {latency:.2f} ms" if latency is not None else ""
        self.console.print(
            f"[{result.index}/{run.stage_count - 1}] {result.name}: [{style}]{result.status}[/{style}]"
            f" ({result.duration_s + result.measure_s:.1f} s){timing}"
        )
        if result.error:
            self.console.print(f"  [red]{result.error}[/red]", highlight=False)


#: Dropped, in this order, when a terminal is too narrow for the whole table.
_OPTIONAL_COLUMNS = ("GMACs", "time s", "sparsity", "Δparams", "size MB", "#", "cosine", "top-1")


def _stage_table(report: RunReport, columns: list[str]) -> Table:
    table = Table(title=f"optkit · {report.pipeline.get('model', {}).get('source')} · {report.environment.get('device')}")
    for column in columns:
        table.add_column(column, justify="left" if column in ("stage", "status") else "right", no_wrap=True)
    for row in stage_rows(report):
        style = _STYLE.get(row["status"]) if row["status"] != "ok" else None
        table.add_row(*(row[c] for c in columns), style=style)
    return table


def _natural_width(console: Console, table: Table) -> int:
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def print_report(report: RunReport, console: Console, run_dir: str) -> None:
    """Print the stage table and where the report files are.

    Rich squeezes a table into the console's width, which makes 15 columns unreadable at 80:
    a narrow terminal loses the optional columns first; a file or pipe (no width of its own)
    gets the table at its natural width.
    """
    columns = list(COLUMNS)
    table = _stage_table(report, columns)
    if console.is_terminal:
        for optional in _OPTIONAL_COLUMNS:
            if _natural_width(console, table) <= console.width:
                break
            columns.remove(optional)
            table = _stage_table(report, columns)
        console.print(table)
        hidden = [c for c in COLUMNS if c not in columns]
        if hidden:
            console.print(f"(terminal too narrow: {', '.join(hidden)} hidden; report.md has every column)", style="dim")
    else:
        # print(width=) can only narrow; a pipe or file has no width of its own to respect.
        console.width = max(console.width, _natural_width(console, table))
        console.print(table)
    console.print("GFLOPs = 2 × GMACs (thop counts multiply-accumulates). Drift is against the baseline.", style="dim")
    console.print(f"Report: {run_dir}/report.json, {run_dir}/report.md · status: {report.status}")
