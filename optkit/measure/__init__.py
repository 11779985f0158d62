"""Measurement: parameters, MACs/GFLOPs, latency, size, peak memory and drift of a model or artifact.

Measurement never changes what it measures: MACs are counted on a copy
(:mod:`optkit.measure.flops`), outputs and latency are taken under ``torch.inference_mode()`` in
eval mode with every submodule's ``training`` flag restored afterwards
(:func:`optkit.measure.probe.eval_mode`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from optkit.artifacts import Artifact
from optkit.measure.drift import compare_outputs, drift_exceeds, flatten_outputs
from optkit.measure.flops import MacsProfile, count_macs, profile_macs
from optkit.measure.latency import summarize_times, time_callable
from optkit.measure.params import count_params
from optkit.measure.probe import eval_mode, meta_copy
from optkit.measure.size import file_bytes, state_dict_bytes

if TYPE_CHECKING:
    from optkit.pipeline import MeasureSpec

__all__ = [
    "Measurement",
    "measure",
    "compare_outputs",
    "drift_exceeds",
    "flatten_outputs",
    "count_params",
    "count_macs",
    "profile_macs",
    "MacsProfile",
    "time_callable",
    "summarize_times",
    "state_dict_bytes",
    "file_bytes",
    "eval_mode",
    "meta_copy",
]


@dataclass
class Measurement:
    """The metrics of one stage and its outputs on the seeded batch (on the CPU, for drift)."""

    metrics: dict[str, Any]
    outputs: Any
    seconds: float


def _to_cpu(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs.detach().cpu()
    if isinstance(outputs, dict):
        return {k: _to_cpu(v) for k, v in outputs.items()}
    if isinstance(outputs, tuple) and hasattr(outputs, "_fields"):  # namedtuple
        return type(outputs)(*(_to_cpu(v) for v in outputs))
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_to_cpu(v) for v in outputs)
    return outputs


def measure(subject: nn.Module | Artifact, inputs: torch.Tensor, settings: MeasureSpec, device: torch.device) -> Measurement:
    """Measure a module (under torch) or an artifact (under its own runtime).

    Args:
        subject: the stage's result.
        inputs: the seeded batch, on ``device``.
        settings: the pipeline's ``measure:`` section (``flops``, ``latency``, ``warmup``, ``iters``).
        device: where to run.

    Returns:
        The metrics (keys in DESIGN.md: ``params``, ``trainable_params``, ``nonzero_params``,
        ``sparsity``, ``macs``, ``gmacs``, ``gflops``, ``unit``, ``uncounted``, ``size_bytes``,
        ``runtime``, ``latency_ms``, ``peak_memory_bytes`` on CUDA), the outputs on the CPU, and
        the seconds measuring took.
    """
    start = time.perf_counter()
    if isinstance(subject, Artifact):
        module = subject.source_model
        run = subject.load(device)
        runtime = subject.runtime
        metrics: dict[str, Any] = {"size_bytes": file_bytes(subject.path), "runtime": runtime}
        in_eval: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    else:
        module = run = subject
        runtime = "torch"
        metrics = {"size_bytes": state_dict_bytes(subject), "runtime": runtime}
        in_eval = eval_mode(subject)
    if module is not None:
        metrics.update(count_params(module))
        if settings.flops:
            metrics.update(count_macs(module, inputs))
    track_memory = device.type == "cuda" and runtime == "torch"
    if track_memory:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with in_eval:
        with torch.inference_mode():
            outputs = _to_cpu(run(inputs))
        if settings.latency:
            metrics["latency_ms"] = time_callable(
                run, inputs, device, settings.warmup, settings.iters, cuda_events=device.type == "cuda" and runtime == "torch"
            )
            metrics["latency_ms"]["runtime"] = runtime
    if track_memory:
        metrics["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return Measurement(metrics=metrics, outputs=outputs, seconds=time.perf_counter() - start)
