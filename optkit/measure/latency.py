"""Latency: warm-up calls, then timed calls, each bracketed so that the time is the whole call's.

On CUDA (torch runtime) every timed call sits between two CUDA events on the current stream,
with the device synchronized before the first event and the second event waited on: the time
is the GPU's time for the call, not the time it took to launch it (what YOLOv5's
``time_synchronized`` intends, without its host-side timer). Runtimes that return host tensors
(onnxruntime) are already synchronous and use ``time.perf_counter`` like the CPU.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

__all__ = ["TimingSettings", "configure_timing", "flush_denormal_enabled", "time_callable", "summarize_times"]


def flush_denormal_enabled() -> bool:
    """Whether this thread flushes denormal floats to zero (torch has a setter but no getter).

    A denormal float32 times one is zero exactly when flushing is on.
    """
    return bool((torch.tensor([1e-40], dtype=torch.float32) * 1.0).item() == 0.0)


class TimingSettings:
    """The process-wide settings latency is measured under: threads, cuDNN autotuning, denormal flushing.

    :func:`configure_timing` returns the settings as they were before it changed them; leaving
    a ``with`` block on it (or calling :meth:`restore`) puts them back.
    """

    def __init__(self) -> None:
        self.threads = torch.get_num_threads()
        self.cudnn_benchmark = bool(torch.backends.cudnn.benchmark)
        self.flush_denormal = flush_denormal_enabled()

    def restore(self) -> None:
        """Put these settings back in place."""
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.set_flush_denormal(self.flush_denormal)

    def __enter__(self) -> TimingSettings:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()


def configure_timing(threads: int | None = None, cudnn_benchmark: bool = False, flush_denormal: bool = True) -> TimingSettings:
    """Set the process-wide conditions latency is measured under; use it as ``with`` to scope them.

    Args:
        threads: torch intra-op threads (``None`` keeps torch's choice).
        cudnn_benchmark: let cuDNN autotune convolutions.
        flush_denormal: treat denormal floats as zero on the CPU. Randomly initialised deep
            networks (``weights: none``) produce activations around 1e-40, and x86 arithmetic on
            denormals is up to 100x slower: without this their CPU latency measures the denormals,
            not the model. Trained models rarely produce them, so this changes no real figure.

    Returns:
        The settings as they were: ``with configure_timing(2): ...`` restores them afterwards
        (a script that means to change them for good ignores it).

    Example:
        >>> with configure_timing(threads=1):
        ...     pass  # timed here with one thread; torch's thread count is back afterwards
    """
    previous = TimingSettings()
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.set_flush_denormal(flush_denormal)
    return previous


def summarize_times(times_ms: list[float]) -> dict[str, float | int]:
    """``p50``, ``p90`` (linear interpolation), ``mean``, ``std`` (sample) and ``n`` of ``times_ms``.

    Example:
        >>> summarize_times([1.0, 2.0, 3.0, 4.0, 5.0])["p90"]
        4.6
    """
    if not times_ms:
        raise ValueError("no timed runs to summarize")
    ordered = sorted(times_ms)
    if len(ordered) == 1:
        p50 = p90 = ordered[0]
    else:
        deciles = statistics.quantiles(ordered, n=10, method="inclusive")
        p50, p90 = statistics.median(ordered), deciles[8]
    return {
        "p50": p50,
        "p90": p90,
        "mean": statistics.fmean(ordered),
        "std": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        "n": len(ordered),
    }


def time_callable(
    fn: Callable[[torch.Tensor], Any],
    inputs: torch.Tensor,
    device: torch.device,
    warmup: int = 10,
    iters: int = 50,
    *,
    cuda_events: bool | None = None,
) -> dict[str, Any]:
    """Time ``fn(inputs)`` under ``torch.inference_mode()``.

    Args:
        fn: the model or runtime callable.
        inputs: the batch (its first dimension is recorded as ``batch``).
        device: where ``fn`` runs.
        warmup: untimed calls first (cuDNN autotuning, allocator, lazy initialisation).
        iters: timed calls (at least 1).
        cuda_events: time with CUDA events; default: whenever ``device`` is CUDA. Pass ``False``
            for runtimes that synchronize themselves (onnxruntime).

    Returns:
        ``p50``, ``p90``, ``mean``, ``std`` in milliseconds, ``n``, ``warmup``, ``batch``,
        ``threads``, ``device`` and ``timer`` (``cuda_event`` or ``perf_counter``); on CUDA also
        ``cudnn_benchmark``.
    """
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    use_events = device.type == "cuda" if cuda_events is None else cuda_events
    with torch.inference_mode():
        for _ in range(warmup):
            fn(inputs)
        times = _time_cuda(fn, inputs, device, iters) if use_events else _time_host(fn, inputs, device, iters)
    result: dict[str, Any] = dict(summarize_times(times))
    result.update(
        warmup=warmup,
        batch=int(inputs.shape[0]) if inputs.dim() else 1,
        threads=torch.get_num_threads(),
        device=str(device),
        timer="cuda_event" if use_events else "perf_counter",
    )
    if device.type == "cuda":
        result["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return result


def _time_host(fn: Callable[[torch.Tensor], Any], inputs: torch.Tensor, device: torch.device, iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _time_cuda(fn: Callable[[torch.Tensor], Any], inputs: torch.Tensor, device: torch.device, iters: int) -> list[float]:
    times = []
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)  # nothing queued before the call is timed with it
            start.record(stream)
            fn(inputs)
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end))
    return times
