"""What a person sees while a run goes: a progress line per stage, on stderr."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from optkit.host import hookimpl
from optkit.reporting.console import STATUS_STYLE

if TYPE_CHECKING:
    from optkit.results import RunInfo, StageResult

__all__ = ["ConsoleProgress"]


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
        style = STATUS_STYLE.get(result.status, "")
        latency = (result.metrics.get("latency_ms") or {}).get("p50")
        timing = f" · p50 {latency:.2f} ms" if latency is not None else ""
        self.console.print(
            f"[{result.index}/{run.stage_count - 1}] {result.name}: [{style}]{result.status}[/{style}]"
            f" ({result.duration_s + result.measure_s:.1f} s){timing}"
        )
        if result.error:
            self.console.print(f"  [red]{result.error}[/red]", highlight=False)
