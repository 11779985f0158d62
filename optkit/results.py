"""What a run produces: per-stage results and the run report (the ``report.json`` contract)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optkit.atomic import atomic_write_text

if TYPE_CHECKING:
    from optkit.pipeline import Pipeline

__all__ = ["SCHEMA_VERSION", "StageResult", "RunInfo", "RunReport"]

#: Bumped only when a field is renamed or removed; fields are otherwise only added.
SCHEMA_VERSION = 1

STAGE_STATUSES = ("ok", "failed", "skipped", "interrupted")
RUN_STATUSES = ("running", "ok", "failed", "interrupted")


@dataclass
class StageResult:
    """One stage of a run (the baseline is stage 0).

    Attributes:
        name: ``baseline`` or the stage's pass name.
        pass_name: the pass (``None`` for the baseline).
        index: 0 for the baseline, then 1, 2, ...
        status: ``ok``, ``failed``, ``skipped`` (not reached) or ``interrupted``.
        duration_s: wall time of the pass itself (measurement excluded).
        metrics: params, MACs, GFLOPs, size, latency and drift (see DESIGN.md).
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
    """What observers (the stage hooks) know about the run in progress."""

    pipeline: Pipeline
    output_dir: Path
    device: str
    stage_names: list[str]

    @property
    def stage_count(self) -> int:
        return len(self.stage_names)


@dataclass
class RunReport:
    """The run report; ``write`` produces ``report.json`` and ``report.md`` atomically."""

    environment: dict[str, Any]
    pipeline: dict[str, Any]
    stages: list[StageResult]
    status: str = "running"
    optkit_version: str = ""
    schema: int = SCHEMA_VERSION
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "optkit_version": self.optkit_version,
            "environment": self.environment,
            "pipeline": self.pipeline,
            "status": self.status,
            "error": self.error,
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
        )

    @classmethod
    def load(cls, path: Path) -> RunReport:
        """Read a ``report.json`` (or the folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "report.json"
        return cls.from_dict(json.loads(path.read_text()))

    @property
    def baseline(self) -> StageResult | None:
        return self.stages[0] if self.stages and self.stages[0].index == 0 else None

    def write(self, folder: Path) -> None:
        """Write ``report.json`` and ``report.md`` into ``folder``, each atomically."""
        from optkit.report import render_markdown

        atomic_write_text(Path(folder) / "report.json", json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        atomic_write_text(Path(folder) / "report.md", render_markdown(self))
