"""The noise check before timing: how steady a fixed workload runs on this machine right now.

A short loop times a fixed matrix product (the same work every call). On a quiet machine its
timings barely vary; when other processes compete for the cores (or the GPU), calls are
preempted and the coefficient of variation (std / mean) of the loop grows. Above ``max_cv`` the
latency figures of the run are flagged as measured on a busy machine.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from optkit.measure.latency import time_callable

__all__ = ["check_noise"]

log = logging.getLogger(__name__)

#: Matrix size of the workload: under a millisecond a call on one CPU core (the loop takes about
#: 30 ms), a few on a GPU.
_SIZE = {"cpu": 384, "cuda": 4096}


def check_noise(device: torch.device, max_cv: float, *, iters: int = 30, warmup: int = 5) -> dict[str, Any]:
    """Time a fixed matrix product ``iters`` times and say whether the machine is too noisy to time on.

    Args:
        device: where the run's timing happens (the workload runs there, timed as models are).
        max_cv: the coefficient of variation (std / mean of the calls) above which it is noisy
            (``measure.noise_max_cv``).
        iters: timed calls.
        warmup: untimed calls first.

    Returns:
        ``workload``, ``n``, ``p50_ms``, ``cv``, ``max_cv`` and ``noisy`` (``cv > max_cv``).
    """
    size = _SIZE["cuda" if device.type == "cuda" else "cpu"]
    matrix = torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(device)
    stats = time_callable(lambda m: m @ m, matrix, device, warmup, iters)
    cv = stats["std"] / stats["mean"] if stats["mean"] > 0 else 0.0
    result = {
        "workload": f"{size}x{size} float32 matrix product on {device}",
        "n": stats["n"],
        "p50_ms": stats["p50"],
        "cv": cv,
        "max_cv": max_cv,
        "noisy": cv > max_cv,
    }
    if result["noisy"]:
        log.warning(
            "the machine is busy: a fixed workload's timings vary by %.0f%% (CV; above %.0f%%), so latency figures are noisy",
            100 * cv, 100 * max_cv,
        )
    return result
