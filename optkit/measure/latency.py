"""Latency: warm-up calls, then timed calls, each bracketed so that the time is the whole call's.

On CUDA (torch runtime) every timed call sits between two CUDA events on the current stream,
with the device synchronized before the first event and the second event waited on: the time
is the GPU's time for the call, not the time it took to launch it (what YOLOv5's
``time_synchronized`` intends, without its host-side timer). Runtimes that synchronize
themselves (onnxruntime returns once its outputs are ready, on the host or, with IO binding, on
the device) are timed with ``time.perf_counter`` between device synchronizations, like the CPU.

A callable is timed alone (:func:`time_callable`: calls in a row) or side by side with others
(:func:`time_round_robin`: one call each per round), and every record carries its spread
(:func:`summarize_times`).
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from optkit.inputs import ExampleInputs
from optkit.measure.intervals import CONFIDENCE, RUN_TO_RUN_MARGIN, median_interval, speedup

__all__ = [
    "Contender",
    "TimingSettings",
    "configure_timing",
    "flush_denormal_enabled",
    "time_callable",
    "time_round_robin",
    "summarize_times",
]

K = TypeVar("K", bound=Hashable)


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


def summarize_times(times_ms: list[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The spread of ``times_ms``: percentiles, the median's confidence interval, mean, std and the timings.

    Returns:
        ``p10``, ``p50``, ``p90`` (linear interpolation), ``p50_interval`` (``low``, ``high`` and
        the achieved ``confidence`` of the distribution-free interval of the median, see
        :func:`optkit.measure.intervals.median_interval`), ``mean``, ``std`` (sample), ``n`` and
        ``samples`` (the timings in the order taken, rounded to 0.1 µs).

    Example:
        >>> summarize_times([1.0, 2.0, 3.0, 4.0, 5.0])["p90"]
        4.6
    """
    if not times_ms:
        raise ValueError("no timed runs to summarize")
    times_ms = [round(t, 4) for t in times_ms]  # what report.json keeps; every figure is computed from it
    ordered = sorted(times_ms)
    if len(ordered) == 1:
        p10 = p50 = p90 = ordered[0]
    else:
        deciles = statistics.quantiles(ordered, n=10, method="inclusive")
        p10, p50, p90 = deciles[0], statistics.median(ordered), deciles[8]
    interval = median_interval(ordered, confidence)
    return {
        "p10": p10,
        "p50": p50,
        "p90": p90,
        "p50_interval": {"low": interval.low, "high": interval.high, "confidence": interval.confidence},
        "mean": statistics.fmean(ordered),
        "std": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        "n": len(ordered),
        "samples": times_ms,
    }


@dataclass(frozen=True)
class Contender:
    """One callable of a round-robin timing loop.

    Attributes:
        fn: the model or runtime callable, called with the input batch.
        cuda_events: time it with CUDA events (torch on CUDA); ``False`` for runtimes that
            synchronize themselves (onnxruntime), timed with ``time.perf_counter`` between
            device synchronizations.
    """

    fn: Callable[[torch.Tensor], Any]
    cuda_events: bool = False


def _call_timer(device: torch.device, cuda_events: bool) -> Callable[[Callable[..., Any], ExampleInputs], float]:
    """A function that calls ``inputs.call(fn)`` once and returns the milliseconds the whole call took."""
    if cuda_events:
        stream = torch.cuda.current_stream(device)

        def timed_by_events(fn: Callable[..., Any], inputs: ExampleInputs) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)  # nothing queued before the call is timed with it
            start.record(stream)
            inputs.call(fn)
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end)

        return timed_by_events
    on_cuda = device.type == "cuda"

    def timed_by_host(fn: Callable[..., Any], inputs: ExampleInputs) -> float:
        if on_cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        inputs.call(fn)
        if on_cuda:
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1e3

    return timed_by_host


def _settings(inputs: ExampleInputs, device: torch.device, warmup: int, cuda_events: bool) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "warmup": warmup,
        "batch": inputs.batch_size,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "timer": "cuda_event" if cuda_events else "perf_counter",
    }
    if device.type == "cuda":
        settings["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return settings


def _on_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def time_callable(
    fn: Callable[..., Any],
    inputs: torch.Tensor | ExampleInputs,
    device: torch.device,
    warmup: int = 10,
    iters: int = 50,
    *,
    cuda_events: bool | None = None,
    confidence: float = CONFIDENCE,
    against: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Time ``fn(inputs)`` alone, ``iters`` calls in a row, under ``torch.inference_mode()``; or,
    with ``against``, side by side with it, round by round (:func:`time_round_robin`).

    Args:
        fn: the model or runtime callable.
        inputs: the batch, or several inputs (:class:`~optkit.inputs.ExampleInputs`, called as
            ``inputs.call(fn)``); the first dimension of the first is recorded as ``batch``.
        device: where ``fn`` runs.
        warmup: untimed calls first (cuDNN autotuning, allocator, lazy initialisation).
        iters: timed calls (at least 1).
        cuda_events: time with CUDA events; default: whenever ``device`` is CUDA. Pass ``False``
            for runtimes that synchronize themselves (onnxruntime).
        confidence: of the median's interval.
        against: a reference callable (the model before a change, timed the same way): each of
            ``iters`` rounds calls both once, in a seeded shuffled order, so that load on a shared
            machine falls on both alike.

    Returns:
        :func:`summarize_times` of the timings (milliseconds), with ``warmup``, ``batch``,
        ``threads``, ``device`` and ``timer`` (``cuda_event`` or ``perf_counter``); on CUDA also
        ``cudnn_benchmark``. With ``against``, also ``against`` (its record) and ``speedup``
        (``against``'s time over ``fn``'s: the median of the per-round ratios with its interval,
        widened by the run-to-run margin, as :func:`optkit.measure.intervals.speedup` gives it).
    """
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    use_events = device.type == "cuda" if cuda_events is None else cuda_events
    if against is not None:
        contenders = {"fn": Contender(fn, use_events), "against": Contender(against, use_events)}
        records = time_round_robin(contenders, inputs, device, warmup, iters, confidence=confidence)
        compared = speedup(records["against"], records["fn"], confidence, paired=True, margin=RUN_TO_RUN_MARGIN)
        figure = compared.model_dump(mode="json") if compared is not None else None
        return {**records["fn"], "against": records["against"], "speedup": figure}
    timed = _call_timer(device, use_events)
    inputs = ExampleInputs.of(inputs)
    with torch.inference_mode(), _on_device(device):
        for _ in range(warmup):
            inputs.call(fn)
        times = [timed(fn, inputs) for _ in range(iters)]
    return {**summarize_times(times, confidence), **_settings(inputs, device, warmup, use_events)}


def time_round_robin(
    contenders: Mapping[K, Contender],
    inputs: torch.Tensor | ExampleInputs,
    device: torch.device,
    warmup: int = 10,
    rounds: int = 50,
    *,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[K, dict[str, Any]]:
    """Time several callables side by side: in every round each is called once, in a shuffled order.

    Noise on a shared machine (another process, a frequency change) falls on all of them alike,
    and the ``i``-th timings of two contenders, taken in the same round, are pairs
    (:func:`optkit.measure.intervals.speedup` takes the median of their ratios). The order is
    shuffled every round with a seeded generator, so that no contender systematically follows
    another: a call pays for what the call before it left behind (caches, a runtime's threads),
    and a fixed or rotating order turns that into a bias: timing ResNet-18 against an identical
    copy, with its ONNX export in the loop, gave "speed-ups" of 1.04-1.15x in a rotating order.

    Args:
        contenders: name → callable and how to time it.
        inputs: the one batch every contender is called with.
        device: where they run.
        warmup: untimed rounds first.
        rounds: timed rounds (at least 1).
        confidence: of each median's interval.
        seed: of the order of the calls in each round (the same seed, the same orders).

    Returns:
        Name → what :func:`time_callable` returns for it, with ``rounds`` timings each.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    names = list(contenders)
    inputs = ExampleInputs.of(inputs)
    timers = {name: _call_timer(device, contenders[name].cuda_events) for name in names}
    times: dict[K, list[float]] = {name: [] for name in names}
    order = random.Random(seed)
    with torch.inference_mode(), _on_device(device):
        for round_index in range(warmup + rounds):
            for name in order.sample(names, len(names)):
                elapsed = timers[name](contenders[name].fn, inputs)
                if round_index >= warmup:
                    times[name].append(elapsed)
    return {
        name: {**summarize_times(times[name], confidence), **_settings(inputs, device, warmup, contenders[name].cuda_events)}
        for name in names
    }
