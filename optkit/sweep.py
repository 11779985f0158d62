"""Sweeps: many (model × pipeline) jobs from one file, run by an executor, gathered into one report.

A sweep file names models and pipeline templates; every pair becomes a :class:`Job` whose
pipeline file is written under ``<output>/jobs/`` and run as ``optkit run`` in a process of its
own (a crash or a hung job takes only itself down). The executor decides where those processes
run: here (:class:`~optkit.executors.LocalExecutor`) or as Ray tasks
(:class:`~optkit.executors.RayExecutor`). The model-zoo benchmark is a sweep with a standard job list.

Example sweep file::

    output: runs/sweep
    device: cpu
    measure: {warmup: 3, iters: 10}
    models: [torchvision:resnet18, torchvision:mobilenet_v3_large]
    pipelines:
      fuse: [fuse_bn]
      fuse_export: [fuse_bn, export_onnx]
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator

from optkit.config_files import ConfigDocument, parse_config, read_config
from optkit.errors import PipelineError
from optkit.pipeline import MeasureSpec

if TYPE_CHECKING:
    from optkit.executors import Executor
    from optkit.results import RunReport

__all__ = [
    "SweepModel",
    "SweepFile",
    "Job",
    "JobOutcome",
    "load_sweep",
    "parse_sweep",
    "plan_jobs",
    "execute_job",
    "run_sweep",
    "SweepResult",
    "outcome_as_run",
]

log = logging.getLogger(__name__)

#: How much of a failed job's stderr is kept as its error when it left no report.
_STDERR_TAIL_LINES = 8


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SweepModel(_Strict):
    """One model of a sweep (a bare ``scheme:name`` string is shorthand for ``{source: ...}``)."""

    source: str = Field(description="scheme:rest, as in a pipeline file's model.source.")
    name: str | None = Field(None, description="Label in reports and job names; default: the part after the last ':'.")
    weights: Any = Field(None, description="As in a pipeline file's model.weights.")
    input_shape: list[PositiveInt] | None = Field(None, description="Overrides the sweep's input shape for this model.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the model builder.")
    input_size_kwarg: str | None = Field(
        None, description="Builder keyword that must equal the input's height (e.g. image_size for vit_b_16)."
    )

    @property
    def label(self) -> str:
        return self.name or self.source.rsplit(":", 1)[-1]


class SweepFile(_Strict):
    """The schema of a sweep file: models × pipelines, and how to run them."""

    models: list[SweepModel] = Field(min_length=1, description="scheme:name strings or mappings (see SweepModel).")
    pipelines: dict[str, list[str | dict[str, Any]]] = Field(
        min_length=1, description="name: list of passes (as in a pipeline file's passes:); [] measures the baseline only."
    )
    device: str | int = Field("auto", description="Device of every job: auto | cpu | cuda | cuda:N.")
    input_shape: list[PositiveInt] = Field(default_factory=lambda: [1, 3, 224, 224], min_length=1)
    input_size: PositiveInt | None = Field(None, description="Square input size; replaces the last two input dimensions.")
    seed: int = 0
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    output: str = Field("runs/sweep", description="Sweep folder: jobs/, runs/ and the combined report.")
    executor: Literal["local", "ray"] = "local"
    workers: PositiveInt = Field(1, description="Jobs run at once by the local executor (and CPUs of a local Ray).")
    timeout_s: PositiveFloat | None = Field(None, description="A job running longer is stopped and reported failed.")
    gpus_per_job: float | None = Field(None, ge=0, description="Ray num_gpus per job; default 1 for a cuda device, else 0.")
    save_model: bool = Field(False, description="Keep each job's final model.pt (large for big models).")

    @field_validator("models", mode="before")
    @classmethod
    def _expand_shorthand(cls, models: Any) -> Any:
        if isinstance(models, list):
            return [{"source": m} if isinstance(m, str) else m for m in models]
        return models


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


def load_sweep(path: str | Path) -> SweepFile:
    """Read and validate a sweep file.

    Raises:
        PipelineError: unreadable file, bad YAML or a wrong key, with ``file:line``.
    """
    return _validate(read_config(path, "sweep file"))


def parse_sweep(text: str, filename: str = "<sweep>") -> SweepFile:
    """Validate sweep YAML ``text`` (see :func:`load_sweep`)."""
    return _validate(parse_config(text, filename))


def _validate(doc: ConfigDocument) -> SweepFile:
    if not isinstance(doc.data, dict):
        raise doc.error("a sweep file is a mapping with at least 'models:' and 'pipelines:'")
    return doc.validate(SweepFile, doc.data)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "job"


def _input_shape(sweep: SweepFile, model: SweepModel) -> list[int]:
    shape = list(model.input_shape or sweep.input_shape)
    if sweep.input_size is not None and model.input_shape is None:
        shape[-2:] = [sweep.input_size, sweep.input_size]
    return shape


def _gpus_for(sweep: SweepFile) -> float:
    if sweep.gpus_per_job is not None:
        return sweep.gpus_per_job
    device = str(sweep.device).lower()
    return 1.0 if device.startswith("cuda") or device.isdigit() else 0.0


def plan_jobs(sweep: SweepFile, output: Path) -> list[Job]:
    """Every (model × pipeline) job of ``sweep``, with its pipeline file text, in file order.

    Args:
        sweep: the validated sweep file.
        output: the sweep folder (jobs go to ``jobs/``, runs to ``runs/``).
    """
    output = Path(output).resolve()
    jobs = []
    for model in sweep.models:
        shape = _input_shape(sweep, model)
        kwargs = dict(model.kwargs)
        if model.input_size_kwarg:
            kwargs[model.input_size_kwarg] = shape[-1]
        for pipeline_name, passes in sweep.pipelines.items():
            name = _safe_name(f"{model.label}--{pipeline_name}")
            run_dir = output / "runs" / name
            spec = {
                "model": {"source": model.source, "weights": model.weights, "input_shape": shape, "kwargs": kwargs},
                "device": sweep.device,
                "seed": sweep.seed,
                "measure": sweep.measure.model_dump(mode="json", exclude_defaults=True),
                "passes": passes,
                "output": str(run_dir),
                "save_model": sweep.save_model,
            }
            header = f"# optkit sweep job {name}: model {model.label}, pipeline {pipeline_name}\n"
            jobs.append(Job(
                name=name,
                model=model.label,
                pipeline=pipeline_name,
                pipeline_yaml=header + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None),
                pipeline_file=str(output / "jobs" / f"{name}.yaml"),
                run_dir=str(run_dir),
                device=str(sweep.device),
                num_gpus=_gpus_for(sweep),
                timeout_s=sweep.timeout_s,
            ))
    names = [j.name for j in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PipelineError(f"models: two jobs would be named {duplicates[0]!r}; give the models distinct 'name:'s")
    return jobs


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
    status = report.get("status") if report and report.get("status") in ("failed", "interrupted") else "failed"
    error = (report or {}).get("error") or _stderr_tail(proc.stderr) or f"optkit run exited with {proc.returncode}"
    return JobOutcome(job, status, report, error, seconds, proc.returncode)


def _read_report(run_dir: str) -> dict[str, Any] | None:
    import json

    path = Path(run_dir) / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("unreadable %s: %s", path, exc)
        return None


def _stderr_tail(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return "\n".join(lines[-_STDERR_TAIL_LINES:])


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
        executor: where jobs run (see :mod:`optkit.executors`).
        output: the sweep folder (an earlier sweep there makes it ``output-2``, as for runs).
        on_done: called with each outcome as it arrives, the count done and the total.
        title: the combined report's title.
        command: the command line that reproduces the sweep (written in the report header).
    """
    from optkit.html_report import write_comparison_report
    from optkit.run_dirs import prepare_run_dir

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
    def runs(self) -> list[Any]:
        """The outcomes as :class:`~optkit.report.ComparedRun` entries of the combined report."""
        return [outcome_as_run(o) for o in self.outcomes]


def _keep_report_locally(outcome: JobOutcome) -> None:
    """A job run on another machine returned its report: keep a copy in the local run folder."""
    import json

    from optkit.atomic import atomic_write_text

    path = Path(outcome.job.run_dir) / "report.json"
    if outcome.report is not None and not path.exists():
        atomic_write_text(path, json.dumps(outcome.report, indent=2, default=str) + "\n")


def outcome_as_run(outcome: JobOutcome) -> Any:
    """A job's outcome as a :class:`~optkit.report.ComparedRun` (a stub report when none was written)."""
    from optkit.report import ComparedRun
    from optkit.results import RunReport

    if outcome.report is not None:
        report = RunReport.from_dict(outcome.report)
    else:
        report = _stub_report(outcome)
    if outcome.status != "ok" and report.status == "ok":
        report.status = outcome.status
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
    from optkit.results import RunReport

    spec = yaml.safe_load(outcome.job.pipeline_yaml)
    return RunReport(environment={}, pipeline={"path": outcome.job.pipeline_file, "model": spec["model"]},
                     stages=[], status=outcome.status, error=outcome.error)
