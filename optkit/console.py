"""What a person sees while a run goes: a progress line per stage, then the stage table (rich)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
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


def print_report(report: RunReport, console: Console, run_dir: str) -> None:
    """Print the stage table and where the report files are."""
    table = Table(title=f"optkit · {report.pipeline.get('model', {}).get('source')} · {report.environment.get('device')}")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("stage", "status") else "right")
    for row in stage_rows(report):
        style = _STYLE.get(row["status"]) if row["status"] != "ok" else None
        table.add_row(*(row[c] for c in COLUMNS), style=style)
    console.print(table)
    console.print("GFLOPs = 2 × GMACs (thop counts multiply-accumulates). Drift is against the baseline.", style="dim")
    console.print(f"Report: {run_dir}/report.json, {run_dir}/report.md · status: {report.status}")
