"""Measuring one stage's product: a module under torch, or an artifact under its own runtime."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from optkit.artifacts import Artifact
from optkit.errors import StageError
from optkit.measure.flops import count_macs
from optkit.measure.latency import time_callable
from optkit.measure.params import count_params
from optkit.measure.size import file_bytes, state_dict_bytes
from optkit.models import eval_mode

if TYPE_CHECKING:
    from optkit.config import MeasureSpec
    from optkit.models import ModuleRule

__all__ = ["Measurement", "measure"]


@dataclass
class Measurement:
    """The metrics of one stage and its outputs on the seeded batch (on the CPU, for drift)."""

    metrics: dict[str, Any]
    outputs: Any
    seconds: float


def _to_cpu(outputs: Any) -> Any:
    """``outputs`` (a tensor, or tuples, dicts, namedtuples of them) with every tensor detached on the CPU."""
    return pytree.tree_map(lambda t: t.detach().cpu() if isinstance(t, torch.Tensor) else t, outputs)


def measure(
    subject: nn.Module | Artifact,
    inputs: torch.Tensor,
    settings: MeasureSpec,
    device: torch.device,
    module_rules: Mapping[str, ModuleRule] | None = None,
) -> Measurement:
    """Measure a module (under torch) or an artifact (under its own runtime).

    Args:
        subject: the stage's result.
        inputs: the seeded batch, on ``device``.
        settings: the pipeline's ``measure:`` section (``flops``, ``latency``, ``warmup``, ``iters``).
        device: where to run.
        module_rules: module rules by class path; their ``macs`` count the modules they describe.

    Returns:
        The metrics (the keys of README's "Reports": ``params``, ``trainable_params``, ``nonzero_params``,
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
            try:
                metrics.update(count_macs(module, inputs, module_rules))
            # Counting runs the model's own code on a copy, which may fail in ways its measured
            # run does not; the message says it was the count, and how to go without it.
            except Exception as exc:  # noqa: BLE001
                raise StageError(
                    f"counting MACs (on a copy of the model) failed: {type(exc).__name__}: {exc}; "
                    "measure.flops: false skips the count"
                ) from exc
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
