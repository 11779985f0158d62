"""How a run times its stages, and the speed-up of every stage with its confidence interval.

Two ways (``measure.compare``):

- **interleaved**: each stage is applied and measured (parameters, MACs, drift) without timing;
  its product is kept (a copy of a module, since the next pass may change it in place; an
  artifact is a file and needs none). After the last stage the baseline and every product are
  timed side by side, round-robin (:func:`optkit.measure.latency.time_round_robin`), so each speed-up
  compares timings taken in the same rounds under the same load.
- **sequential**: each product is timed right after it is applied, and only the current model is
  held. For models too big to hold once per stage.

``auto`` (the default) picks interleaved when the extra copies fit: one per stage, each the size
of the baseline's parameters and buffers (an ONNX session holds about as much), must need at
most half of the memory available now (``MemAvailable`` on the CPU, free device memory on CUDA).
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from optkit.artifacts import Artifact
from optkit.errors import StageError
from optkit.inputs import ExampleInputs
from optkit.measure.intervals import INDEPENDENT_SPEEDUP_METHOD, MEDIAN_METHOD, PAIRED_SPEEDUP_METHOD, speedup
from optkit.measure.latency import Contender, time_callable, time_round_robin
from optkit.measure.noise import check_noise
from optkit.measure.size import tensor_bytes
from optkit.measure.stage import latency_record, runnable
from optkit.results import NoiseCheck, StageResult, Timing, TimingMemory, TimingStatus

if TYPE_CHECKING:
    from optkit.config.pipeline import MeasureSpec

__all__ = ["TimingPlan", "plan_timing", "StageTiming"]

log = logging.getLogger(__name__)

#: Interleaved timing may use at most this share of the memory available when the run starts.
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class TimingPlan:
    """Which way a run times its stages, and why.

    Attributes:
        compare: ``interleaved`` or ``sequential``.
        reason: one line for the report.
        memory: the estimate behind an ``auto`` choice (bytes per copy, copies, bytes available).
    """

    compare: str
    reason: str
    memory: dict[str, Any]


def available_memory(device: torch.device) -> tuple[int | None, str]:
    """Bytes available now where the copies would live, and where the figure comes from."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), "torch.cuda.mem_get_info (free)"
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "/proc/meminfo MemAvailable"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free physical pages (sysconf)"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def plan_timing(settings: MeasureSpec, model: nn.Module, stage_count: int, device: torch.device) -> TimingPlan:
    """Decide between interleaved and sequential timing for a run of ``stage_count`` stages after the baseline."""
    if settings.compare == "sequential":
        return TimingPlan("sequential", "measure.compare: sequential", {})
    if stage_count == 0:
        return TimingPlan("sequential", "no stage to time beside the baseline", {})
    # What the side-by-side timing really holds: the baseline and every stage's product but the
    # last (that one is the live model), each about one model (an artifact's runtime session too).
    # Passes copy nothing (they change the model they are handed), and ctx.baseline_model shares
    # the baseline's copy, so nothing else is held.
    per_copy = tensor_bytes(model)
    available, source = available_memory(device)
    memory = {
        "bytes_per_copy": per_copy,
        "copies": stage_count,
        "available_bytes": available,
        "available_from": source,
        "share": MEMORY_SHARE,
    }
    needed = per_copy * stage_count
    if settings.compare == "interleaved":
        return TimingPlan("interleaved", "measure.compare: interleaved", memory)
    if available is None:
        return TimingPlan("interleaved", "auto: available memory unknown; interleaved", memory)
    copies = f"{stage_count} {'copy' if stage_count == 1 else 'copies'} of {per_copy / 2**20:.1f} MiB"
    share = f"{MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB available"
    if needed <= MEMORY_SHARE * available:
        return TimingPlan("interleaved", f"auto: {copies} {'fits' if stage_count == 1 else 'fit'} in {share}", memory)
    return TimingPlan("sequential", f"auto: {copies} {'exceeds' if stage_count == 1 else 'exceed'} {share}", memory)


class StageTiming:
    """Times a run's stages as its plan says and gives each timed stage its speed-ups.

    The runner calls :meth:`start` before the baseline, :meth:`keep` after each stage measured
    ``ok`` (in stage order), :meth:`add_speedups` after each sequential measurement, and
    :meth:`time_side_by_side` after the last stage. :attr:`summary` is report.json's ``timing``.
    """

    def __init__(
        self, plan: TimingPlan, settings: MeasureSpec, inputs: torch.Tensor | ExampleInputs, device: torch.device, stage_count: int
    ):
        self.plan, self.settings, self.inputs, self.device = plan, settings, inputs, device
        self.stage_count = stage_count
        self._kept: dict[int, nn.Module | Artifact] = {}
        self._running: int | None = None
        self.summary = Timing()
        if settings.latency:
            self.summary = Timing(
                compare=plan.compare,
                requested=settings.compare,
                reason=plan.reason,
                warmup=settings.warmup,
                iters=settings.iters,
                order=(
                    "side by side after the last stage: each round calls every product once, in a seeded shuffled order"
                    if self.interleaved
                    else "each stage's product timed alone, right after it is applied"
                ),
                confidence=settings.confidence,
                run_to_run_margin=settings.run_to_run_margin,
                median_interval=MEDIAN_METHOD,
                speedup_interval=PAIRED_SPEEDUP_METHOD if self.interleaved else INDEPENDENT_SPEEDUP_METHOD,
                tie="a speed-up whose interval (widened by the run-to-run margin) includes 1 is a tie: reports show 'tie', not a speed-up or slow-down",
                status=TimingStatus.pending if self.interleaved else None,
                memory=TimingMemory.model_validate(plan.memory) if plan.memory else None,
            )

    @property
    def interleaved(self) -> bool:
        """Stages are timed side by side after the last one (``measure()`` must not time them)."""
        return self.settings.latency and self.plan.compare == "interleaved"

    def start(self) -> None:
        """Before the baseline: the noise check, when stages are timed one by one from now on."""
        if self.settings.latency and not self.interleaved:
            self._check_noise()

    def _check_noise(self) -> None:
        if self.settings.noise_max_cv is not None:
            self.summary.noise = NoiseCheck.model_validate(check_noise(self.device, self.settings.noise_max_cv))

    def keep(self, result: StageResult, product: nn.Module | Artifact) -> None:
        """Hold ``result``'s product for the side-by-side timing (a copy of a module the next pass may change)."""
        if not self.interleaved:
            return
        if isinstance(product, Artifact) or result.index == self.stage_count:
            self._kept[result.index] = product
            return
        try:
            self._kept[result.index] = copy.deepcopy(product)
        # deepcopy runs the module's own __deepcopy__/__reduce__ (plugin code) and fails in any
        # way a class makes it; such a stage is timed alone, now, and the report says so.
        except Exception as exc:  # noqa: BLE001
            log.warning("%s cannot be copied (%s: %s); timing it alone, now", result.name, type(exc).__name__, exc)
            run = runnable(product, self.device)
            with run.ready():
                latency = time_callable(
                    run.call,
                    self.inputs,
                    self.device,
                    self.settings.warmup,
                    self.settings.iters,
                    cuda_events=run.cuda_events,
                    confidence=self.settings.confidence,
                )
            result.metrics.latency_ms = latency_record(
                latency, run, "sequential", why_sequential=f"the product cannot be copied: {type(exc).__name__}: {exc}"
            )

    def forget(self, index: int) -> None:
        """Leave stage ``index`` out of the side-by-side timing (its kept product can no longer be trusted)."""
        self._kept.pop(index, None)

    def kept_module(self, index: int) -> nn.Module | None:
        """The copy of stage ``index``'s module held for the side-by-side loop, or ``None``."""
        kept = self._kept.get(index)
        return kept if isinstance(kept, nn.Module) else None

    def add_speedups(self, stages: list[StageResult]) -> None:
        """Give every timed stage its speed-up over the baseline and over the timed stage before it.

        Two stages timed in the same side-by-side loop are compared round by round (the median of
        the per-round ratios); otherwise as two independent samples (ratio of medians, bootstrap).
        """
        timed = [(s, s.metrics.latency_ms) for s in stages if s.status == "ok" and s.metrics.latency_ms is not None]
        timed = [(s, latency) for s, latency in timed if latency is not None and latency.samples]
        if not timed or timed[0][0].index != 0:
            return
        for (previous, before), (stage, new) in itertools.pairwise(timed):
            for key, (reference, base) in (("speedup", timed[0]), ("speedup_vs_previous", (previous, before))):
                paired = base.compare == new.compare == "interleaved"
                figure = speedup(
                    {"samples": base.samples},
                    {"samples": new.samples},
                    self.settings.confidence,
                    paired=paired,
                    margin=self.settings.run_to_run_margin,
                )
                if figure is not None:
                    figure.against = reference.name
                    setattr(stage.metrics, key, figure)

    def time_side_by_side(self, stages: list[StageResult]) -> None:
        """Time the baseline and every kept product round-robin; fill their ``latency_ms`` and speed-ups.

        Raises:
            StageError: a product failed when called (named by its stage); the stages keep their
                other metrics, without latency.
            KeyboardInterrupt: Ctrl-C; :attr:`summary` says ``interrupted``.
        """
        kept = {i: product for i, product in self._kept.items() if stages[i].status == "ok"}
        self._kept.clear()
        if not self.interleaved or not kept:
            return
        try:
            self._check_noise()
            with ExitStack() as stack:
                runs = {}
                for index, product in kept.items():
                    self._running = index
                    runs[index] = run = runnable(product, self.device)
                    stack.enter_context(run.ready())
                contenders = {index: Contender(self._calling(index, run.call), run.cuda_events) for index, run in runs.items()}
                records = time_round_robin(
                    contenders, self.inputs, self.device, self.settings.warmup, self.settings.iters, confidence=self.settings.confidence
                )
        except KeyboardInterrupt:
            self.summary.status = TimingStatus.interrupted
            raise
        # The products are plugin code (a pass's module, an artifact's runtime) and may fail in any way.
        except Exception as exc:
            stage = stages[self._running] if self._running is not None else None
            where = f"stage {stage.index} ({stage.name})" if stage is not None else "the loop"
            message = (
                f"timing the stages side by side failed in {where}: {type(exc).__name__}: {exc}; "
                "measure.compare: sequential times each stage alone, right after it is applied"
            )
            self.summary.status, self.summary.error = TimingStatus.failed, message
            raise StageError(message) from exc
        for index, record in records.items():
            run = runs[index]
            stages[index].metrics.latency_ms = latency_record(record, run, "interleaved", side_by_side=len(records))
        self.summary.status = TimingStatus.ok
        self.add_speedups(stages)

    def _calling(self, index: int, call: Any) -> Any:
        """``call``, noting which stage runs (to name it if it fails)."""

        def run(*args: Any, **kwargs: Any) -> Any:
            self._running = index
            return call(*args, **kwargs)

        return run
