"""Executors: where the jobs of a sweep run — local processes, or Ray tasks on a cluster.

Both run the same :func:`optkit.sweep.jobs.execute_job` (``optkit run`` in a child process) and hand
every outcome back as it arrives; they differ only in where that function is called.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, Protocol

from optkit.errors import PipelineError
from optkit.sweep.jobs import JobOutcome, execute_job

if TYPE_CHECKING:
    from optkit.sweep.jobs import Job

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "make_executor", "EXECUTORS"]

log = logging.getLogger(__name__)

#: Executor names accepted by ``optkit sweep --executor`` and a sweep file's ``executor:``.
EXECUTORS = ("local", "ray")


class Executor(Protocol):
    """Runs jobs and reports each outcome through ``on_done`` as soon as it is known."""

    name: str

    def run(self, jobs: list[Job], on_done: Callable[[JobOutcome], None]) -> list[JobOutcome]:
        """Run ``jobs``; returns their outcomes in job order. A failing job never stops the others."""
        ...


class LocalExecutor:
    """Jobs as child processes on this machine, ``workers`` at a time.

    Each job is its own ``optkit run`` process, so threads only wait on them: a job that crashes
    the interpreter, or runs out of memory, fails alone. Keep ``workers=1`` for latency figures
    (jobs running side by side share the cores and slow each other down).
    """

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)

    def run(self, jobs: list[Job], on_done: Callable[[JobOutcome], None]) -> list[JobOutcome]:
        outcomes: dict[str, JobOutcome] = {}
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="optkit-job") as pool:
            futures = {pool.submit(execute_job, job): job for job in jobs}
            for future in as_completed(futures):
                outcome = future.result()
                outcomes[outcome.job.name] = outcome
                on_done(outcome)
        return [outcomes[job.name] for job in jobs]


class RayExecutor:
    """Jobs as Ray tasks, each asking for ``job.num_gpus`` GPUs and ``cpus_per_job`` CPUs.

    With no ``address`` (and no ``RAY_ADDRESS`` in the environment) a one-machine Ray is started
    with ``workers`` CPUs and stopped afterwards; otherwise the executor joins that cluster, whose
    workers need optkit and the job's model sources installed. Reports come back as task results,
    so workers need no file system shared with this machine.

    Args:
        address: a Ray cluster address (``auto``, ``ray://head:10001``), or ``None``.
        workers: CPUs of a Ray started here (so at most that many CPU jobs at once).
        cpus_per_job: ``num_cpus`` of every task.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int = 1, cpus_per_job: float = 1.0) -> None:
        self.address = address
        self.workers = max(1, workers)
        self.cpus_per_job = cpus_per_job

    def run(self, jobs: list[Job], on_done: Callable[[JobOutcome], None]) -> list[JobOutcome]:
        ray = _import_ray()
        started_here = self._init(ray)
        try:
            remote = ray.remote(execute_job)
            pending = {
                remote.options(num_cpus=self.cpus_per_job, num_gpus=job.num_gpus, name=f"optkit:{job.name}").remote(job): job
                for job in jobs
            }
            outcomes: dict[str, JobOutcome] = {}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ready[0])
                outcome = self._result(ray, ready[0], job)
                outcomes[job.name] = outcome
                on_done(outcome)
        finally:
            if started_here:
                ray.shutdown()
        return [outcomes[job.name] for job in jobs]

    def _init(self, ray: Any) -> bool:
        """Connect to (or start) Ray; returns whether this call started it."""
        if ray.is_initialized():
            return False
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if self.address is None and "RAY_ADDRESS" not in os.environ:
            options["num_cpus"] = self.workers
        else:
            options["address"] = self.address
        ray.init(**options)
        return True

    @staticmethod
    def _result(ray: Any, ref: Any, job: Job) -> JobOutcome:
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:  # the task or its worker died: this job alone fails
            return JobOutcome(job, "failed", None, f"Ray task failed: {type(exc).__name__}: {exc}")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PipelineError("the ray executor needs Ray: pip install 'optkit[ray]'") from None
    return ray


def make_executor(name: str, workers: int = 1, ray_address: str | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``).

    Raises:
        PipelineError: an unknown name.
    """
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(ray_address, workers)
    raise PipelineError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")
