"""What a run produces: per-stage results and the run report (the ``report.json`` contract).

These are data classes only: rendering and writing live in :mod:`optkit.reporting`.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optkit.errors import PipelineError
from optkit.files import read_limited

if TYPE_CHECKING:
    from optkit.config import Pipeline

__all__ = [
    "SCHEMA_VERSION",
    "REPORT_MAX_BYTES",
    "STAGE_STATUSES",
    "RUN_STATUSES",
    "StageResult",
    "RunInfo",
    "RunReport",
    "optkit_version",
    "read_report_json",
]

#: Bumped only when a field is renamed or removed; fields are otherwise only added.
SCHEMA_VERSION = 1

#: The largest report.json optkit reads (a run's is a few KiB; a comparison of hundreds of runs a few MiB).
REPORT_MAX_BYTES = 64 * 2**20

#: What a stage can end as (``skipped``: not reached).
STAGE_STATUSES = ("ok", "failed", "skipped", "interrupted")
#: What a run can be in: ``running`` until it ends.
RUN_STATUSES = ("running", "ok", "failed", "interrupted")


def optkit_version() -> str:
    """The installed optkit's version (``unknown`` when run from a source tree that is not installed)."""
    try:
        return importlib.metadata.version("optkit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def read_report_json(path: str | Path) -> dict[str, Any]:
    """The ``report.json`` of a run or sweep folder (or the file itself), as a dict.

    Raises:
        FileNotFoundError: there is none.
        PipelineError: it cannot be read, is not JSON, or is not an optkit report.
    """
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    try:
        data = json.loads(read_limited(file, REPORT_MAX_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # UnsafeFileError, bad JSON and bad UTF-8 are ValueErrors
        raise PipelineError(f"cannot read report: {exc}", str(file)) from exc
    if not isinstance(data, dict) or not ("runs" in data or "stages" in data):
        raise PipelineError("not an optkit report (no 'stages' or 'runs')", str(file))
    return data


@dataclass
class StageResult:
    """One stage of a run (the baseline is stage 0).

    Attributes:
        name: ``baseline`` or the stage's pass name.
        pass_name: the pass (``None`` for the baseline).
        index: 0 for the baseline, then 1, 2, ...
        status: ``ok``, ``failed``, ``skipped`` (not reached) or ``interrupted``.
        duration_s: wall time of the pass itself (measurement excluded).
        metrics: params, MACs, GFLOPs, size, latency and drift (see README, "Reports").
        details: what the pass (or model loading, for the baseline) reported.
        artifacts: files written by the stage, relative to the run folder.
        error: the message when the stage failed.
    """

    name: str
    pass_name: str | None = None
    index: int = 0
    status: str = "skipped"
    duration_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    error: str | None = None
    measure_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pass"] = data.pop("pass_name")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        data = dict(data)
        data["pass_name"] = data.pop("pass", None)
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class RunInfo:
    """What observers (the stage hooks) know about the run in progress.

    Attributes:
        compare: how latency is timed: ``sequential`` (each stage's ``latency_ms`` is in its result
            when ``optkit_stage_finished`` sees it) or ``interleaved`` (every stage is timed side by
            side after the last one: latency arrives in report.json at the end of the run).
    """

    pipeline: Pipeline
    output_dir: Path
    device: str
    stage_names: list[str]
    compare: str = "sequential"

    @property
    def stage_count(self) -> int:
        return len(self.stage_names)


@dataclass
class RunReport:
    """The run report: what ``report.json`` holds (:func:`optkit.reporting.write_run_report` writes it).

    Attributes:
        timing: how latency was measured: ``compare`` (``interleaved`` or ``sequential``) and why,
            the noise check, the interval methods, and ``status`` of the side-by-side timing.
    """

    environment: dict[str, Any]
    pipeline: dict[str, Any]
    stages: list[StageResult]
    status: str = "running"
    optkit_version: str = ""
    schema: int = SCHEMA_VERSION
    error: str | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    #: The run folder's lock while the run held it (:mod:`optkit.run.lock`): pid, host, started, took_over.
    lock: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "optkit_version": self.optkit_version,
            "environment": self.environment,
            "pipeline": self.pipeline,
            "status": self.status,
            "error": self.error,
            "timing": self.timing,
            **({"lock": self.lock} if self.lock else {}),
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        return cls(
            environment=data.get("environment", {}),
            pipeline=data.get("pipeline", {}),
            stages=[StageResult.from_dict(s) for s in data.get("stages", [])],
            status=data.get("status", "ok"),
            optkit_version=data.get("optkit_version", ""),
            schema=data.get("schema", SCHEMA_VERSION),
            error=data.get("error"),
            timing=data.get("timing", {}),
            lock=data.get("lock") or {},
        )

    @classmethod
    def load(cls, path: str | Path) -> RunReport:
        """Read a ``report.json`` (or the folder holding one)."""
        return cls.from_dict(read_report_json(path))

    @property
    def baseline(self) -> StageResult | None:
        return self.stages[0] if self.stages and self.stages[0].index == 0 else None
