"""Sweep jobs: one (model × pipeline) run as ``optkit run`` in a child process, and its outcome.

Executors (:mod:`optkit.sweep.executors`) decide where :func:`execute_job` runs; the driver
(:mod:`optkit.sweep.driver`) plans the jobs and gathers their outcomes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optkit.errors import PipelineError
from optkit.results import read_report_json

__all__ = ["Job", "JobOutcome", "execute_job"]

log = logging.getLogger(__name__)

#: How much of a failed job's stderr is kept as its error when it left no report.
_STDERR_TAIL_LINES = 8


@dataclass(frozen=True)
class Job:
    """One (model × pipeline) run of a sweep; picklable, so it travels to Ray workers.

    Attributes:
        name: unique, file-name safe: ``<model>--<pipeline>``.
        model: the model's label.
        pipeline: the pipeline template's name.
        pipeline_yaml: the complete pipeline file the job runs.
        pipeline_file: where that file is written.
        run_dir: the job's run folder.
        device: the device the job asks for.
        num_gpus: GPUs the job asks a Ray scheduler for.
        timeout_s: wall-clock limit, or ``None``.
    """

    name: str
    model: str
    pipeline: str
    pipeline_yaml: str
    pipeline_file: str
    run_dir: str
    device: str
    num_gpus: float = 0.0
    timeout_s: float | None = None


@dataclass
class JobOutcome:
    """What a job left: its status, error and report (``report.json`` content, possibly partial).

    Attributes:
        status: ``ok``, ``failed`` or ``interrupted``.
        report: the run's ``report.json`` as a dict; ``None`` when the run wrote none.
        error: why the job failed, when it did.
        seconds: wall time of the job, process start included.
        returncode: the exit code of ``optkit run`` (``None`` if it never finished).
    """

    job: Job
    status: str
    report: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    returncode: int | None = None
    host: str = field(default_factory=lambda: os.uname().nodename)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["job"] = {k: v for k, v in data["job"].items() if k != "pipeline_yaml"}
        return data


def execute_job(job: Job) -> JobOutcome:
    """Run one job as ``optkit run`` in a child process and collect its report.

    This runs where the executor puts it (a local thread, a Ray worker on another machine): it
    writes the job's pipeline file there, runs it, and returns the report's content, so the caller
    needs no shared file system.
    """
    start = time.perf_counter()
    command = [sys.executable, "-m", "optkit.cli", "run", job.pipeline_file, "--output", job.run_dir, "--overwrite"]
    try:
        Path(job.pipeline_file).parent.mkdir(parents=True, exist_ok=True)
        Path(job.pipeline_file).write_text(job.pipeline_yaml, encoding="utf-8")
        proc = subprocess.run(command, capture_output=True, text=True, timeout=job.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        report = _read_report(job.run_dir)
        return JobOutcome(job, "failed", report, f"timed out after {job.timeout_s:g} s", time.perf_counter() - start)
    except OSError as exc:
        return JobOutcome(job, "failed", None, f"could not start the job: {exc}", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    report = _read_report(job.run_dir)
    if proc.returncode == 0 and report is not None:
        return JobOutcome(job, "ok", report, None, seconds, proc.returncode)
    status = str(report["status"]) if report and report.get("status") in ("failed", "interrupted") else "failed"
    error = (report or {}).get("error") or _stderr_tail(proc.stderr) or f"optkit run exited with {proc.returncode}"
    return JobOutcome(job, status, report, error, seconds, proc.returncode)


def _read_report(run_dir: str) -> dict[str, Any] | None:
    try:
        return read_report_json(Path(run_dir))
    except FileNotFoundError:
        return None
    except PipelineError as exc:
        log.warning("%s", exc)
        return None


def _stderr_tail(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return "\n".join(lines[-_STDERR_TAIL_LINES:])
