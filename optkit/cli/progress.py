"""What a person sees while a run goes: a progress line per stage, and a progress bar for a pass
that reports one (training), on stderr."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as ProgressBars

from optkit.host.hookspecs import hookimpl
from optkit.reporting.console import STATUS_STYLE
from optkit.reporting.tables import weights_line, weights_partly_loaded

if TYPE_CHECKING:
    from optkit.passes import Progress
    from optkit.results import RunInfo, StageResult

__all__ = ["ConsoleProgress"]


class ConsoleProgress:
    """A plugin (registered by the CLI) that shows each stage as it starts and finishes, and the
    progress a pass reports (``ctx.report_progress``) as one bar per task.

    Args:
        console: where to draw (stderr).
        bars: draw progress bars; ``False`` (``--json``) keeps to one line per stage.
    """

    def __init__(self, console: Console, bars: bool = True) -> None:
        self.console = console
        self.bars = bars
        self._status: Any = None
        self._bars: ProgressBars | None = None
        self._tasks: dict[str, Any] = {}

    @hookimpl
    def optkit_stage_started(self, stage: str, index: int, run: RunInfo) -> None:
        self._status = self.console.status(f"[{index}/{run.stage_count - 1}] {stage} …")
        self._status.start()

    @hookimpl
    def optkit_stage_progress(self, stage: str, index: int, progress: Progress, run: RunInfo) -> None:
        if not self.bars:
            return
        if self._bars is None:
            if self._status is not None:
                self._status.stop()
                self._status = None
            self._bars = ProgressBars(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
            )
            self._bars.start()
            self._tasks = {}
        info = escape(" · ".join(f"{name} {_shown(value)}" for name, value in progress.fields.items()))
        task = self._tasks.get(progress.task)
        if task is None:
            description = escape(f"[{index}/{run.stage_count - 1}] {stage} · {progress.task}")
            self._tasks[progress.task] = self._bars.add_task(description, total=progress.total, completed=progress.completed, info=info)
        else:
            self._bars.update(task, total=progress.total, completed=progress.completed, info=info)

    @hookimpl
    def optkit_stage_finished(self, result: StageResult, run: RunInfo) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._bars is not None:  # the bars stay on screen, complete, above the stage's line
            self._bars.stop()
            self._bars = None
        style = STATUS_STYLE.get(result.status, "")
        latency = result.metrics.latency_ms.p50 if result.metrics.latency_ms is not None else None
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


def _shown(value: object) -> str:
    """A progress field as text: floats to 4 significant digits, integers with separators."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
