"""Runs to compare, read back from run folders, sweep folders, comparison reports and ``report.json`` files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from optkit.errors import PipelineError
from optkit.results import COMPARISON_KIND, ComparedRun, ComparisonReport, RunReport, read_report_json

__all__ = ["load_runs"]


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
        return ComparisonReport.from_dict(data, file).runs
    folder = path if path.is_dir() else path.parent
    return [ComparedRun(RunReport.from_dict(data, file), run_dir=str(folder))]
