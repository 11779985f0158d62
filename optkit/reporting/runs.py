"""Runs to compare: a run's report with the labels it is shown under, read back from run folders,
sweep folders, comparison reports and ``report.json`` files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optkit.errors import PipelineError
from optkit.results import SCHEMA_VERSION, RunReport, read_report_json

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
            self.model = str((spec.get("model") or {}).get("source", "?")).rsplit(":", 1)[-1]
        if not self.pipeline:
            self.pipeline = "+".join(p.get("pass", "?") for p in spec.get("passes") or []) or "baseline"

    @property
    def device(self) -> str:
        """The device name the run recorded ('' when it recorded none: it failed before measuring)."""
        return str(self.report.environment.get("device") or "")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "pipeline": self.pipeline, "run_dir": self.run_dir,
                "seconds": self.seconds, "report": self.report.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComparedRun:
        return cls(RunReport.from_dict(data["report"]), data.get("model", ""), data.get("pipeline", ""),
                   data.get("run_dir"), data.get("seconds"))


def load_runs(paths: list[Path], on_skip: Callable[[PipelineError], None] | None = None) -> list[ComparedRun]:
    """Runs from run folders, ``report.json`` files and comparison reports, in the order given.

    Args:
        paths: what to read.
        on_skip: called with the error of each path that cannot be read; that path is then left out
            and the others are read. Without it, the first such path raises.

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
            on_skip(exc)
    if errors and not runs:
        raise errors[0]
    return runs


def _load(path: Path) -> list[ComparedRun]:
    try:
        data = read_report_json(path)
    except FileNotFoundError:
        raise PipelineError("no report.json here (expected a run folder, a sweep folder or a report.json)", str(path)) from None
    file = str(path / "report.json" if path.is_dir() else path)
    try:
        if data.get("kind") == COMPARISON_KIND:
            entries = _expect(data, "runs", list)
            for i, _ in enumerate(entries):
                _check_run(_expect(_expect(entries, i, dict, "runs."), "report", dict, f"runs.{i}."), f"runs.{i}.report.")
            return [ComparedRun.from_dict(entry) for entry in entries]
        _check_run(data, "")
        folder = path if path.is_dir() else path.parent
        return [ComparedRun(RunReport.from_dict(data), run_dir=str(folder))]
    except ValueError as exc:
        raise PipelineError(str(exc), file) from None


def _check_run(report: dict[str, Any], prefix: str) -> None:
    """Check the fields of a run's report that rendering reads (their types), and its schema.

    Raises:
        ValueError: naming the field (``stages.0.metrics``) and what it holds.
    """
    schema = report.get("schema", SCHEMA_VERSION)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema > SCHEMA_VERSION:
        raise ValueError(f"schema {schema} is newer than this optkit reads ({SCHEMA_VERSION}); upgrade optkit")
    for key in ("environment", "pipeline", "timing"):
        _expect(report, key, dict, prefix, optional=True)
    for key in ("status", "error"):
        _expect(report, key, str, prefix, optional=True)
    for i, stage in enumerate(_expect(report, "stages", list, prefix, optional=True) or []):
        where = f"{prefix}stages.{i}."
        _expect(report["stages"], i, dict, f"{prefix}stages.")
        for key in ("metrics", "details"):
            _expect(stage, key, dict, where, optional=True)
        for key in ("name", "status", "error"):
            _expect(stage, key, str, where, optional=True)
        for j, _ in enumerate(_expect(stage, "artifacts", list, where, optional=True) or []):
            _expect(stage["artifacts"], j, str, f"{where}artifacts.")


_TYPE_NAMES = {dict: "mapping", list: "list", str: "string"}


def _expect(container: Any, key: Any, kind: type, prefix: str = "", optional: bool = False) -> Any:
    """``container[key]`` when it is a ``kind`` (or absent/null with ``optional``), else ValueError naming it."""
    value = container.get(key) if isinstance(container, dict) else container[key]
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        raise ValueError(f"'{prefix}{key}' must be a {_TYPE_NAMES[kind]}, got {type(value).__name__}")
    return value
