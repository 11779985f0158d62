"""Computing chain prefixes as sweep jobs, through the stage cache.

A prefix is computed by one ``optkit run`` job (:mod:`optkit.sweep.jobs`, so the local and Ray
executors both run it) that starts from the longest cached prefix it can continue from (a saved
module, when no remaining stage reads the baseline model) and stores every stage it computes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from optkit.config.pipeline import Pipeline
from optkit.optimize.cache import CacheEntry, StageCache, prefix_key
from optkit.optimize.candidates import Chain, Step, chain_name
from optkit.sweep.executors import Executor
from optkit.sweep.jobs import Job, JobOutcome

__all__ = ["PrefixRunner", "pipeline_document", "absolute_sections"]

log = logging.getLogger(__name__)

#: A job's first guess at its own duration, before any job has finished.
_FIRST_GUESS_S = 30.0


def absolute_sections(pipeline: Pipeline) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The pipeline's ``model:`` and ``data:`` sections with every relative path made absolute,
    so that a pipeline file written elsewhere (a job, ``chosen.yaml``) means the same."""
    model = pipeline.model.model_dump(mode="json", exclude_defaults=True)
    if pipeline.model.scheme == "file":
        model["source"] = f"file:{pipeline.resolve(pipeline.model.target).resolve()}"
    weights = model.get("weights")
    if isinstance(weights, str) and pipeline.resolve(weights).exists():
        model["weights"] = str(pipeline.resolve(weights).resolve())
    data = None
    if pipeline.data is not None:
        data = pipeline.data.model_dump(mode="json", exclude_defaults=True)
        data["root"] = str(pipeline.data_dir.resolve())
    return model, data


def pipeline_document(
    pipeline: Pipeline, model: dict[str, Any], passes: list[Any], output: Path, *, latency: bool, save_model: bool = True
) -> dict[str, Any]:
    """A complete pipeline file: ``pipeline``'s device, seed, measure and data, with ``model`` and ``passes``."""
    _, data = absolute_sections(pipeline)
    measure = pipeline.measure.model_dump(mode="json", exclude_defaults=True)
    measure.pop("max_accuracy_drop", None)  # the search judges accuracy itself: no stage fails for it
    if not latency:
        measure["latency"] = False
    return {
        "model": model,
        "device": pipeline.spec.device,
        "seed": pipeline.spec.seed,
        "measure": measure,
        **({"data": data} if data is not None else {}),
        "passes": passes,
        "output": str(output),
        "save_model": save_model,
    }


@dataclass
class PrefixRunner:
    """Computes chain prefixes with an executor, reusing and filling the stage cache.

    Attributes:
        pipeline: the pipeline whose model and data every job uses.
        model_id: the model's content hash (:func:`optkit.optimize.cache.model_hash`).
        cache: the stage cache.
        executor: where jobs run.
        folder: jobs/ and runs/ go here.
        deadline: ``time.monotonic()`` by which jobs must be done.
        baseline_needs: pass name -> whether the stage (with its options) reads the baseline model.
    """

    pipeline: Pipeline
    model_id: str
    cache: StageCache
    executor: Executor
    folder: Path
    deadline: float
    baseline_needs: dict[Step, bool]
    device: str = "cpu"
    #: Keys of the prefixes taken from the cache / computed by this search.
    reused_keys: set[str] = field(default_factory=set)
    computed_keys: set[str] = field(default_factory=set)
    #: Rung → the seconds each of its jobs took (a rung's jobs are alike: pruning, fine-tuning, export and int8).
    job_seconds: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def key(self, prefix: Chain) -> str:
        _, data = absolute_sections(self.pipeline)
        return prefix_key(self.model_id, [step.as_pass_item() for step in prefix], data, self.device)

    def lookup(self, prefix: Chain) -> CacheEntry | None:
        """The cached entry of ``prefix``; a hit counts its stages as reused."""
        entry = self.cache.get(self.key(prefix))
        if entry is not None:
            self._reused(prefix)
        return entry

    def _reused(self, prefix: Chain) -> None:
        for k in range(len(prefix) + 1):  # stage 0 too: the baseline's measurement
            key = self.key(prefix[:k])
            if key not in self.computed_keys:
                self.reused_keys.add(key)

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def affordable(self, count: int, rung: str = "") -> int:
        """How many more jobs of ``rung`` fit in the time left, judged by its jobs so far (before
        any has finished, by every rung's)."""
        seconds = self.job_seconds.get(rung) or [t for times in self.job_seconds.values() for t in times]
        per_job = sum(seconds) / len(seconds) if seconds else _FIRST_GUESS_S
        workers = max(1, getattr(self.executor, "workers", 1))
        return min(count, max(0, math.floor(self.seconds_left() / per_job * workers)))

    def compute(self, prefixes: list[Chain], rung: str = "") -> dict[Chain, CacheEntry]:
        """Each prefix's entry, from the cache or computed (a prefix that is also the start of a
        longer one in the list is computed by the longer one's job); ``rung`` names the kind of job,
        whose earlier durations judge how many fit in the time left."""
        found: dict[Chain, CacheEntry] = {}
        todo: list[Chain] = []
        for prefix in dict.fromkeys(prefixes):
            entry = self.lookup(prefix)
            if entry is not None:
                found[prefix] = entry
            else:
                todo.append(prefix)
        longest = [p for p in todo if not any(len(q) > len(p) and q[: len(p)] == p and self._same_job(p, q) for q in todo)]
        workers = max(1, getattr(self.executor, "workers", 1))
        queue = list(longest)
        while queue:
            # A batch of `workers` jobs at a time: each batch's time limit is the time left when it starts.
            batch = queue[: self.affordable(min(workers, len(queue)), rung)]
            if not batch:
                log.info("optimize: %d jobs do not fit in the time left", len(queue))
                break
            del queue[: len(batch)]
            jobs = [self._job(prefix) for prefix in batch]
            for outcome in self.executor.run([job for job, _, _ in jobs], lambda outcome: None):
                self.job_seconds.setdefault(rung, []).append(outcome.seconds)
                self._store(outcome, next((start, prefix) for job, start, prefix in jobs if job.name == outcome.job.name))
        for prefix in todo:
            entry = self.cache.get(self.key(prefix))
            if entry is not None:
                found[prefix] = entry
        return found

    def _same_job(self, short: Chain, long: Chain) -> bool:
        """``short`` is stored by ``long``'s job (its stages lie between the job's start and end)."""
        return len(self._start(long)) <= len(short)

    def _start(self, prefix: Chain) -> Chain:
        """The longest cached prefix of ``prefix`` a job can continue from: a saved module, with no
        remaining stage reading the baseline model."""
        for k in range(len(prefix) - 1, 0, -1):
            if any(self.baseline_needs.get(step, False) for step in prefix[k:]):
                break
            entry = self.cache.get(self.key(prefix[:k]))
            if entry is not None and entry.product is not None and entry.product.suffix == ".pt":
                return prefix[:k]
        return ()

    def _job(self, prefix: Chain) -> tuple[Job, Chain, Chain]:
        start = self._start(prefix)
        if start:
            self._reused(start)
            entry = self.cache.get(self.key(start))
            assert entry is not None and entry.product is not None  # _start found it
            model = {"source": f"file:{entry.product.resolve()}", "trust_checkpoint": True}
            model["input_shape"] = self.pipeline.model.model_dump(mode="json").get("input_shape")
        else:
            model, _ = absolute_sections(self.pipeline)
        name = f"{chain_name(prefix)}-{self.key(prefix)[:8]}"
        run_dir = self.folder / "runs" / name
        passes = [step.as_pass_item() for step in prefix[len(start) :]]
        document = pipeline_document(self.pipeline, model, passes, run_dir, latency=False)
        header = f"# optkit optimize: stages {len(start) + 1}-{len(prefix)} of {chain_name(prefix)}\n"
        job = Job(
            name=name,
            model=chain_name(start) if start else "model",
            pipeline=chain_name(prefix),
            pipeline_yaml=header + yaml.safe_dump(document, sort_keys=False, default_flow_style=None),
            pipeline_file=str(self.folder / "jobs" / f"{name}.yaml"),
            run_dir=str(run_dir),
            device=str(self.pipeline.spec.device),
            timeout_s=max(1.0, self.seconds_left()),
        )
        return job, start, prefix

    def _store(self, outcome: JobOutcome, planned: tuple[Chain, Chain]) -> None:
        """Store every stage the job measured ok: the module at its end, each artifact, and the
        baseline's metrics (a job that started from the model itself)."""
        start, prefix = planned
        report = outcome.report or {}
        stages = report.get("stages") or []
        run_dir = Path(outcome.job.run_dir)
        if outcome.status != "ok":
            self.failures[chain_name(prefix)] = outcome.error or outcome.status
            log.warning("optimize: %s failed: %s", chain_name(prefix), outcome.error)
        for stage in stages:
            if stage.get("status") != "ok":
                continue
            index = int(stage["index"])
            if index == 0 and (start or self.cache.get(self.key(())) is not None):
                continue  # the module the job started from: already cached (a job from the model re-measures the baseline)
            done = prefix[: len(start) + index]
            product = self._product(stage, run_dir, last=index == len(prefix) - len(start))
            self._put(done, product, stage.get("metrics") or {})

    def _product(self, stage: dict[str, Any], run_dir: Path, *, last: bool) -> Path | None:
        onnx = [a for a in stage.get("artifacts") or [] if str(a).endswith(".onnx")]
        if onnx:
            return run_dir / onnx[-1]
        model = run_dir / "model.pt"
        return model if last and model.is_file() else None

    def _put(self, prefix: Chain, product: Path | None, metrics: dict[str, Any]) -> None:
        key = self.key(prefix)
        self.computed_keys.add(key)
        self.reused_keys.discard(key)
        known = self.cache.get(key)
        if product is not None or known is None or known.product is None:
            self.cache.put(key, product, len(prefix), metrics, [step.as_pass_item() for step in prefix])
