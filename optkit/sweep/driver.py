"""Sweeps: run the planned jobs with an executor and gather them into one comparison report.

Every job runs as ``optkit run`` in a process of its own (a crash or a hung job takes only itself
down); the executor decides where those processes run: here
(:class:`~optkit.sweep.executors.LocalExecutor`) or as Ray tasks
(:class:`~optkit.sweep.executors.RayExecutor`). The model-zoo benchmark is a sweep with a
standard job list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from optkit.config.sweep import SweepFile
from optkit.files import atomic_write_text
from optkit.reporting.writing import write_comparison_report
from optkit.results import ComparedRun, RunReport, RunStatus
from optkit.run.run_dirs import prepare_run_dir
from optkit.sweep.executors import Executor
from optkit.sweep.jobs import JobOutcome
from optkit.sweep.plan import plan_jobs

__all__ = ["run_sweep", "SweepResult", "outcome_as_run"]

log = logging.getLogger(__name__)


def run_sweep(
    sweep: SweepFile,
    executor: Executor,
    output: Path,
    *,
    on_done: Callable[[JobOutcome, int, int], None] | None = None,
    title: str = "optkit sweep",
    command: str | None = None,
) -> SweepResult:
    """Run every job of ``sweep`` with ``executor`` and write the combined report into the sweep folder.

    A failing job is recorded (status, error, partial report) and the other jobs go on.

    Args:
        sweep: the validated sweep file.
        executor: where jobs run (see :mod:`optkit.sweep.executors`).
        output: the sweep folder (an earlier sweep there makes it ``output-2``, as for runs).
        on_done: called with each outcome as it arrives, the count done and the total.
        title: the combined report's title.
        command: the command line that reproduces the sweep (written in the report header).
    """
    output = prepare_run_dir(Path(output))
    jobs = plan_jobs(sweep, output)
    meta: dict[str, Any] = {"title": title, "command": command, "executor": executor.name, "jobs": len(jobs)}
    write_comparison_report([], output, meta=meta, status="running")
    log.info("sweep of %d jobs with the %s executor into %s", len(jobs), executor.name, output)
    done = 0

    def record(outcome: JobOutcome) -> None:
        nonlocal done
        done += 1
        _keep_report_locally(outcome)
        if on_done is not None:
            on_done(outcome, done, len(jobs))

    outcomes = executor.run(jobs, record)
    meta["job_seconds"] = round(sum(o.seconds for o in outcomes), 1)
    result = SweepResult(outcomes, output, meta)
    write_comparison_report(result.runs, output, meta=meta, status=result.status)
    return result


@dataclass
class SweepResult:
    """The outcomes of a sweep, in job order, and where they are."""

    outcomes: list[JobOutcome]
    output: Path
    meta: dict[str, Any]

    @property
    def status(self) -> str:
        return "ok" if all(o.status == "ok" for o in self.outcomes) else "failed"

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]

    @property
    def runs(self) -> list[ComparedRun]:
        """The outcomes as :class:`~optkit.reporting.runs.ComparedRun` entries of the combined report."""
        return [outcome_as_run(o) for o in self.outcomes]


def _keep_report_locally(outcome: JobOutcome) -> None:
    """A job run on another machine returned its report: keep a copy in the local run folder."""
    path = Path(outcome.job.run_dir) / "report.json"
    if outcome.report is not None and not path.exists():
        atomic_write_text(path, RunReport.from_dict(outcome.report, str(path)).to_json())  # through the models: no NaN token


def outcome_as_run(outcome: JobOutcome) -> ComparedRun:
    """A job's outcome as a :class:`~optkit.reporting.runs.ComparedRun` (a stub report when none was written)."""
    if outcome.report is not None:
        report = RunReport.from_dict(outcome.report)
    else:
        report = _stub_report(outcome)
    if outcome.status != "ok" and report.status == "ok":
        report.status = RunStatus(outcome.status)  # ok, failed or interrupted (see JobOutcome)
    if outcome.error and not report.error:
        report.error = outcome.error
    return ComparedRun(
        report=report,
        model=outcome.job.model,
        pipeline=outcome.job.pipeline,
        run_dir=outcome.job.run_dir,
        seconds=outcome.seconds,
    )


def _stub_report(outcome: JobOutcome) -> RunReport:
    spec = yaml.safe_load(outcome.job.pipeline_yaml)
    return RunReport(
        environment={},
        pipeline={"path": outcome.job.pipeline_file, "model": spec["model"]},
        stages=[],
        status=outcome.status,
        error=outcome.error,
    )
