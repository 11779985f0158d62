"""What a person sees while a run goes: a progress line per stage, on stderr."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from optkit.host import hookimpl
from optkit.reporting import weights_line, weights_partly_loaded
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
        weights = result.details.get("weights") if result.index == 0 else None
        if isinstance(weights, dict) and weights_partly_loaded(weights):
            self.console.print(f"  [yellow]weights partly loaded:[/yellow] {escape(weights_line(weights))}", highlight=False)
        if result.error:  # plugin text: never read as rich markup
            self.console.print(f"  [red]{escape(result.error)}[/red]", highlight=False)
        # The last stage, or one that failed after the baseline: what was measured is timed next.
        last = result.index == run.stage_count - 1 or (result.status == "failed" and result.index > 0)
        if last and run.compare == "interleaved" and result.status != "interrupted":
            rounds = run.pipeline.measure.iters
            self.console.print(f"timing the baseline and every stage side by side ({rounds} rounds) …", style="dim")
