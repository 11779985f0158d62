"""Measurement: parameters, MACs/GFLOPs, latency, size and drift of a model or artifact.

Measurement never changes what it measures: MACs are counted on a copy, and latency and outputs
are taken under ``torch.inference_mode()``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from optkit.artifacts import Artifact
from optkit.measure.drift import compare_outputs, drift_exceeds, flatten_outputs
from optkit.measure.flops import count_macs
from optkit.measure.latency import time_callable
from optkit.measure.params import count_params
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
    "time_callable",
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
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_to_cpu(v) for v in outputs) if not hasattr(outputs, "_fields") else type(outputs)(*(_to_cpu(v) for v in outputs))
    return outputs


def measure(subject: nn.Module | Artifact, inputs: torch.Tensor, settings: MeasureSpec, device: torch.device) -> Measurement:
    """Measure a module (under torch) or an artifact (under its own runtime).

    Args:
        subject: the stage's result.
        inputs: the seeded batch, on ``device``.
        settings: the pipeline's ``measure:`` section.
        device: where to run.
    """
    start = time.perf_counter()
    if isinstance(subject, Artifact):
        module = subject.source_model
        run = subject.load(device)
        metrics: dict[str, Any] = {"size_bytes": file_bytes(subject.path), "runtime": subject.runtime}
    else:
        module = subject
        run = subject
        metrics = {"size_bytes": state_dict_bytes(subject), "runtime": "torch"}
    if module is not None:
        metrics.update(count_params(module))
        if settings.flops:
            metrics.update(count_macs(module, inputs))
    with torch.inference_mode():
        outputs = _to_cpu(run(inputs))
    if settings.latency:
        metrics["latency_ms"] = time_callable(run, inputs, device, settings.warmup, settings.iters)
        metrics["latency_ms"]["runtime"] = metrics["runtime"]
    return Measurement(metrics=metrics, outputs=outputs, seconds=time.perf_counter() - start)
