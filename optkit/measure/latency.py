"""Latency: warm-up, then timed calls; CUDA calls bracketed by events and synchronization."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

__all__ = ["time_callable"]


def time_callable(
    fn: Callable[[torch.Tensor], Any],
    inputs: torch.Tensor,
    device: torch.device,
    warmup: int = 10,
    iters: int = 50,
) -> dict[str, Any]:
    """Time ``fn(inputs)`` under ``torch.inference_mode()``.

    On CUDA each timed call is recorded between two CUDA events and synchronized, so the time is
    the GPU's, not the launch's; on CPU ``time.perf_counter`` brackets each call.

    Returns:
        ``p50``, ``p90``, ``mean``, ``std`` in milliseconds, ``n``, ``warmup``, ``batch``,
        ``threads`` and ``device``.
    """
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            for _ in range(iters):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(inputs)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(iters):
                t0 = time.perf_counter()
                fn(inputs)
                times.append((time.perf_counter() - t0) * 1e3)
    ordered = sorted(times)
    return {
        "p50": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))],
        "mean": statistics.fmean(ordered),
        "std": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        "n": len(ordered),
        "warmup": warmup,
        "batch": int(inputs.shape[0]) if inputs.dim() else 1,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
