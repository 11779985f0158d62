"""Runs to compare: a run's report with the labels it is shown under, read back from run folders,
sweep folders, comparison reports and ``report.json`` files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optkit.errors import PipelineError
from optkit.results import RunReport, read_report_json

__all__ = ["COMPARISON_KIND", "ComparedRun", "load_runs"]

#: ``kind`` of a comparison ``report.json`` (a run's report.json has none).
COMPARISON_KIND = "optkit-comparison"


@dataclass
class ComparedRun:
    """One run in a comparison: its report and the labels it is shown under.

    Attributes:
        report: the run's report (a stub with status ``failed`` when the run wrote none).
        model: model label; default the part of ``model.source`` after the last ``:``.
        pipeline: pipeline label; default the passes joined by ``+`` (``baseline`` when none).
        run_dir: where the run's files are.
        seconds: wall time of the job, when a sweep ran it.
    """

    report: RunReport
    model: str = ""
    pipeline: str = ""
    run_dir: str | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        spec = self.report.pipeline
        if not self.model:
            self.model = str(spec.model.get("source", "?")).rsplit(":", 1)[-1]
        if not self.pipeline:
            self.pipeline = "+".join(p.get("pass", "?") for p in spec.passes) or "baseline"

    @property
    def device(self) -> str:
        """The device name the run recorded ('' when it recorded none: it failed before measuring)."""
        return str(self.report.environment.device or "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "pipeline": self.pipeline,
            "run_dir": self.run_dir,
            "seconds": self.seconds,
            "report": self.report.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "report.json") -> ComparedRun:
        """One entry of a comparison report's ``runs`` (``where``: the file, for errors)."""
        return cls(
            RunReport.from_dict(data["report"], where),
            data.get("model", ""),
            data.get("pipeline", ""),
            data.get("run_dir"),
            data.get("seconds"),
        )


def load_runs(paths: list[Path], on_skip: Callable[[PipelineError], None] | None = None) -> list[ComparedRun]:
    """Runs from run folders, ``report.json`` files and comparison reports, in the order given.

    Args:
        paths: what to read.
        on_skip: called, once every path was read, with the error of each path that could not be (and
            was left out). Without it, the first such path raises.

    Raises:
        PipelineError: a path holds no report, or one that cannot be read (a special file, over
            :data:`~optkit.results.REPORT_MAX_BYTES`, malformed, from a newer schema), naming the
            file and the field; with ``on_skip``, only when no path could be read.
    """
    runs: list[ComparedRun] = []
    errors: list[PipelineError] = []
    for given in paths:
        try:
            runs += _load(Path(given))
        except PipelineError as exc:
            if on_skip is None:
                raise
            errors.append(exc)
    if errors and not runs:
        raise errors[0]  # nothing to compare: the error alone, not a warning too
    for error in errors:
        on_skip(error)  # type: ignore[misc]  # errors is empty without on_skip
    return runs


def _load(path: Path) -> list[ComparedRun]:
    try:
        data = read_report_json(path)
    except FileNotFoundError:
        raise PipelineError("no report.json here (expected a run folder, a sweep folder or a report.json)", str(path)) from None
    file = str(path / "report.json" if path.is_dir() else path)
    if data.get("kind") == COMPARISON_KIND:
        entries = data.get("runs")
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("report"), dict) for e in entries):
            raise PipelineError("a comparison report's 'runs' must be a list of mappings, each with a 'report' mapping", file)
        return [ComparedRun.from_dict(entry, file) for entry in entries]
    folder = path if path.is_dir() else path.parent
    return [ComparedRun(RunReport.from_dict(data, file), run_dir=str(folder))]
