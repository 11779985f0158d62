"""Measuring one stage's product: a module under torch, or an artifact under its own runtime."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from optkit.artifacts import Artifact
from optkit.errors import StageError
from optkit.inputs import ExampleInputs
from optkit.measure.flops import count_macs
from optkit.measure.latency import Contender, time_callable
from optkit.measure.params import count_params
from optkit.measure.size import file_bytes, state_dict_bytes
from optkit.models.layers import eval_mode
from optkit.results import Latency, StageMetrics

if TYPE_CHECKING:
    from optkit.config.pipeline import MeasureSpec
    from optkit.models.rules import ModuleRule

__all__ = ["Measurement", "Runnable", "runnable", "latency_record", "measure"]


@dataclass
class Measurement:
    """The metrics of one stage and its outputs on the seeded batch (on the CPU, for drift)."""

    metrics: StageMetrics
    outputs: Any
    seconds: float


@dataclass
class Runnable:
    """A stage's product made ready to call and time.

    Attributes:
        subject: the stage's product.
        call: the model, or the artifact's runtime callable.
        runtime: ``torch`` or the artifact's runtime (``onnxruntime``).
        module: the module to count (the artifact's source model, if any).
        io: where a call's inputs and outputs live and whether it copies through the host
            (report.json's ``latency_ms.io``).
        cuda_events: time it with CUDA events (torch on CUDA).
    """

    subject: nn.Module | Artifact
    call: Callable[..., Any]
    runtime: str
    module: nn.Module | None
    io: dict[str, Any] = field(default_factory=dict)
    cuda_events: bool = False

    def ready(self) -> contextlib.AbstractContextManager[Any]:
        """Eval mode for a module (every ``training`` flag restored on exit); nothing for an artifact."""
        return eval_mode(self.subject) if isinstance(self.subject, nn.Module) else contextlib.nullcontext()

    @property
    def contender(self) -> Contender:
        return Contender(self.call, self.cuda_events)


def runnable(subject: nn.Module | Artifact, device: torch.device) -> Runnable:
    """``subject`` ready to call on ``device``: a module as it is, an artifact loaded into its runtime."""
    if isinstance(subject, Artifact):
        return Runnable(subject, subject.load(device), subject.runtime, subject.source_model, subject.io(device))
    io = {"inputs": str(device), "outputs": str(device), "host_copies": False}
    return Runnable(subject, subject, "torch", subject, io, cuda_events=device.type == "cuda")


def latency_record(timings: dict[str, Any], run: Runnable, compare: str, **extra: Any) -> Latency:
    """report.json's ``latency_ms`` of ``run``: what :func:`optkit.measure.time_callable` (or one
    contender of :func:`optkit.measure.time_round_robin`) measured, with the runtime, where its
    inputs and outputs live, and how it was compared (``sequential`` or ``interleaved``)."""
    return Latency.model_validate({**timings, "runtime": run.runtime, "io": run.io, "compare": compare, **extra})


def _to_cpu(outputs: Any) -> Any:
    """``outputs`` (a tensor, or tuples, dicts, namedtuples of them) with every tensor detached on the CPU."""
    return pytree.tree_map(lambda t: t.detach().cpu() if isinstance(t, torch.Tensor) else t, outputs)


def measure(
    subject: nn.Module | Artifact,
    inputs: torch.Tensor | ExampleInputs,
    settings: MeasureSpec,
    device: torch.device,
    module_rules: Mapping[str, ModuleRule] | None = None,
    *,
    time_latency: bool = True,
) -> Measurement:
    """Measure a module (under torch) or an artifact (under its own runtime).

    Args:
        subject: the stage's result.
        inputs: the seeded batch, or the model's several inputs, on ``device``.
        settings: the pipeline's ``measure:`` section (``flops``, ``latency``, ``warmup``, ``iters``,
            ``confidence``).
        device: where to run.
        module_rules: module rules by class path; their ``macs`` count the modules they describe.
        time_latency: time it here (when ``settings.latency``); ``False`` when the runner times
            every stage side by side later.

    Returns:
        The metrics (:class:`optkit.results.StageMetrics`: parameters, MACs, size, runtime, latency,
        peak CUDA memory; drift and accuracy are added by the runner), the outputs on the CPU, and
        the seconds measuring took.
    """
    start = time.perf_counter()
    inputs = ExampleInputs.of(inputs)
    run = runnable(subject, device)
    size = file_bytes(subject.path) if isinstance(subject, Artifact) else state_dict_bytes(subject)
    counts: dict[str, Any] = {"size_bytes": size, "runtime": run.runtime}
    if run.module is not None:
        counts.update(count_params(run.module))
        if settings.flops:
            try:
                counts.update(count_macs(run.module, inputs, module_rules))
            # Counting runs the model's own code on a copy, which may fail in ways its measured
            # run does not; the message says it was the count, and how to go without it.
            except Exception as exc:
                raise StageError(
                    f"counting MACs (on a copy of the model) failed: {type(exc).__name__}: {exc}; measure.flops: false skips the count"
                ) from exc
    metrics = StageMetrics.model_validate(counts)
    track_memory = device.type == "cuda" and run.runtime == "torch"
    if track_memory:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with run.ready():
        with torch.inference_mode():
            outputs = _to_cpu(inputs.call(run.call))
        if settings.latency and time_latency:
            latency = time_callable(
                run.call, inputs, device, settings.warmup, settings.iters, cuda_events=run.cuda_events, confidence=settings.confidence
            )
            metrics.latency_ms = latency_record(latency, run, "sequential")
    if track_memory:
        metrics.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    return Measurement(metrics=metrics, outputs=outputs, seconds=time.perf_counter() - start)
