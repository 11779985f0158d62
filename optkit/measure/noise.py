"""The noise check before timing: does this process get the machine to itself right now?

A short loop times a fixed matrix product (the same work every call). Two signs say the machine
is too busy to time on:

- on the CPU, the **CPU share**: the CPU time the process got during the loop over the wall time
  times torch's intra-op threads. Alone on its cores the product keeps every thread busy (share
  about 1); when other processes compete, the threads wait for a core and the share falls (two
  spinning processes on this project's 2-core VM: 0.5). A steady load
  slows every call alike, so only this sign sees it;
- the **robust spread** of the calls (1.4826 × MAD / median, the coefficient of variation a normal
  distribution would have): erratic preemption, on the CPU or a shared GPU. Unlike std / mean, one
  late wake-up does not move it (std / mean on a quiet VM ranged 6–29%).
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import torch

from optkit.measure.latency import time_callable

__all__ = ["MIN_CPU_SHARE", "check_noise"]

log = logging.getLogger(__name__)

#: Matrix size of the workload: about 3 ms a call on two CPU threads (the loop, 0.1-0.2 s), long
#: enough that Python's own time between calls (one thread) does not lower the CPU share; a few ms
#: on a GPU.
_SIZE = {"cpu": 768, "cuda": 4096}

#: Below this CPU share (CPU time / (wall time × threads)) during the loop, the CPU is contended.
#: Measured on the 2-core VM: quiet 0.96-1.0; two competing processes 0.5; four 0.32.
MIN_CPU_SHARE = 0.80


def check_noise(device: torch.device, max_cv: float, *, iters: int = 30, warmup: int = 5) -> dict[str, Any]:
    """Time a fixed matrix product ``iters`` times and say whether the machine is too noisy to time on.

    Args:
        device: where the run's timing happens (the workload runs there, timed as models are).
        max_cv: the robust spread (1.4826 × MAD / median of the calls) above which it is noisy
            (``measure.noise_max_cv``).
        iters: timed calls.
        warmup: untimed calls first.

    Returns:
        ``workload``, ``n``, ``p50_ms``, ``cv`` (the robust spread), ``max_cv``, on the CPU
        ``cpu_share`` and ``min_cpu_share``, ``noisy`` and, when noisy, ``why``.
    """
    size = _SIZE["cuda" if device.type == "cuda" else "cpu"]
    matrix = torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(device)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    stats = time_callable(lambda m: m @ m, matrix, device, warmup, iters)
    cpu_seconds, wall_seconds = time.process_time() - cpu_start, time.perf_counter() - wall_start
    median = stats["p50"]
    cv = 1.4826 * statistics.median(abs(t - median) for t in stats["samples"]) / median if median > 0 else 0.0
    result: dict[str, Any] = {
        "workload": f"{size}x{size} float32 matrix product on {device}",
        "n": stats["n"],
        "p50_ms": stats["p50"],
        "cv": round(cv, 4),
        "max_cv": max_cv,
    }
    why = [f"its timings vary by {cv:.0%} (robust CV, above {max_cv:.0%})"] if cv > max_cv else []
    if device.type == "cpu":
        share = cpu_seconds / (wall_seconds * torch.get_num_threads()) if wall_seconds > 0 else 1.0
        result.update(cpu_share=round(share, 3), min_cpu_share=MIN_CPU_SHARE)
        if share < MIN_CPU_SHARE:
            why.append(f"the process got {share:.0%} of its {torch.get_num_threads()} threads' CPU time (other processes compete)")
    result["noisy"] = bool(why)
    if why:
        result["why"] = "; ".join(why)
        log.warning("the machine is busy: a fixed workload: %s, so latency figures are noisy", result["why"])
    return result
