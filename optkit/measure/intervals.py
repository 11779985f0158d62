"""Confidence intervals for latency: the median of one sample, and a speed-up (a ratio of two latencies).

- **A median** gets the distribution-free interval of its order statistics: ``x(j)`` and
  ``x(n+1-j)`` of ``n`` sorted timings enclose the true median with probability
  ``1 - 2·P(B < j)``, ``B ~ Binomial(n, ½)``, whatever the distribution of the timings (they need
  only be independent draws of one distribution). ``j`` is the largest index whose coverage still
  reaches the confidence asked for; the achieved confidence is recorded (below the one asked for
  only where ``n`` is too small for any pair: ``n ≤ 5`` at 95%, where the interval is
  ``[min, max]``).
- **A speed-up of two stages timed side by side** (the same rounds of one round-robin loop) is
  the median of the per-round ratios ``baseline_i / stage_i``, with the same order-statistic
  interval (the sign-test interval of a paired median). Load that slows a whole round cancels in
  its ratio, so the figure and its interval hold on a busy machine too.
- **A speed-up of two stages timed apart** is ``median(baseline) / median(stage)``, with a
  percentile-bootstrap interval (each sample resampled independently, 2000 resamples, a fixed
  seed: the same timings always give the same interval).

A speed-up whose interval includes 1 is a tie. The coverage of each interval is checked by
simulation in ``tests/test_intervals.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from optkit.results import Speedup, SpeedupInterval

__all__ = [
    "CONFIDENCE",
    "MEDIAN_METHOD",
    "PAIRED_SPEEDUP_METHOD",
    "INDEPENDENT_SPEEDUP_METHOD",
    "RUN_TO_RUN_MARGIN",
    "Interval",
    "median_interval",
    "paired_ratio_interval",
    "ratio_of_medians_interval",
    "speedup",
]

#: The default confidence of every interval.
CONFIDENCE = 0.95
#: Resamples of the speed-up bootstrap, and its seed.
RESAMPLES = 2000
SEED = 0

#: How intervals are computed, as report.json states it.
MEDIAN_METHOD = "distribution-free order-statistic interval of the median (binomial coverage)"
PAIRED_SPEEDUP_METHOD = (
    "timed side by side: median of the per-round ratios baseline/stage, with the order-statistic interval of that median"
)
INDEPENDENT_SPEEDUP_METHOD = (
    f"timed apart: median(baseline) / median(stage), percentile bootstrap interval ({RESAMPLES} resamples, seed {SEED})"
)


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval.

    Attributes:
        estimate: the point estimate (a median, a ratio of medians).
        low, high: the interval's bounds.
        confidence: the confidence achieved (for order statistics, at least the one asked for
            unless the sample is too small; for the bootstrap, the one asked for).
    """

    estimate: float
    low: float
    high: float
    confidence: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _binomial_half_cdf(k: int, n: int) -> float:
    """``P(B <= k)`` for ``B ~ Binomial(n, 1/2)``, exactly (as a float)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_interval(samples: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The distribution-free interval of the median of ``samples`` from their order statistics.

    Args:
        samples: independent draws (at least one).
        confidence: wanted coverage, in (0, 1).

    Returns:
        The sample median, ``x(j)`` and ``x(n+1-j)`` (1-indexed, sorted), and their exact coverage.

    Example:
        >>> interval = median_interval(list(range(1, 51)))   # 50 timings
        >>> interval.low, interval.high, round(interval.confidence, 4)
        (18, 33, 0.9672)
    """
    if len(samples) == 0:
        raise ValueError("no samples")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    ordered = sorted(samples)
    n = len(ordered)
    j, coverage = 1, 1.0 - 2.0 * _binomial_half_cdf(0, n)
    while j + 1 <= n + 1 - (j + 1):
        wider = 1.0 - 2.0 * _binomial_half_cdf(j, n)  # coverage of [x(j+1), x(n-j)]
        if wider < confidence:
            break
        j, coverage = j + 1, wider
    return Interval(float(np.median(ordered)), float(ordered[j - 1]), float(ordered[n - j]), max(coverage, 0.0))


def paired_ratio_interval(numerator: Sequence[float], denominator: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The median of the ratios ``numerator[i] / denominator[i]`` and its order-statistic interval.

    For timings taken in pairs (round ``i`` of a round-robin loop): distribution-free, it needs
    only that the rounds are independent draws of one distribution.

    Args:
        numerator, denominator: the paired samples (positive, equal lengths).
        confidence: wanted coverage, in (0, 1).
    """
    if len(numerator) != len(denominator):
        raise ValueError(f"paired samples need equal lengths, got {len(numerator)} and {len(denominator)}")
    return median_interval([a / b for a, b in zip(numerator, denominator, strict=True)], confidence)


def ratio_of_medians_interval(
    numerator: Sequence[float],
    denominator: Sequence[float],
    confidence: float = CONFIDENCE,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """``median(numerator) / median(denominator)`` of two independent samples, with a percentile-bootstrap interval.

    Args:
        numerator, denominator: the two samples (positive timings).
        confidence: wanted coverage, in (0, 1).
        resamples: bootstrap resamples (each sample is resampled independently).
        seed: the generator's seed (fixed: the same samples give the same interval).
    """
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("no samples")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    ratios = _bootstrap_medians(rng, a, resamples) / _bootstrap_medians(rng, b, resamples)
    low, high = np.quantile(ratios, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(float(np.median(a) / np.median(b)), float(low), float(high), confidence)


def _bootstrap_medians(rng: np.random.Generator, samples: np.ndarray, resamples: int) -> np.ndarray:
    """Medians of ``resamples`` resamples of ``samples``, drawn in chunks to bound memory (~16 MB at a time)."""
    n = samples.shape[0]
    chunk = max(1, 2_000_000 // n)
    medians = np.empty(resamples)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        medians[start:stop] = np.median(samples[rng.integers(0, n, size=(stop - start, n))], axis=1)
    return medians


#: How far a speed-up moves between runs beyond what one run's interval sees: each speed-up
#: interval is widened by this share on both sides (low / (1 + m), high × (1 + m)). An interval of
#: per-round ratios covers the noise of one run, not where a model's memory happens to lie, how a
#: runtime's thread pool started, or the machine's state: on this project's 2-core VM, quiet (the
#: noise check passed), two runs of one export_onnx stage gave 2.05x [1.99-2.09] and 1.94x
#: [1.88-1.97]; two identical copies of ResNet-18 side by side differed by up to 3%
#: (1.03x [1.01-1.07]). ``measure.run_to_run_margin``.
RUN_TO_RUN_MARGIN = 0.05


def speedup(
    baseline: dict[str, Any],
    stage: dict[str, Any],
    confidence: float = CONFIDENCE,
    *,
    paired: bool,
    margin: float = RUN_TO_RUN_MARGIN,
) -> Speedup | None:
    """The speed-up of ``stage`` over ``baseline`` (two ``latency_ms`` records with ``samples``).

    Args:
        baseline, stage: latency records as :func:`optkit.measure.latency.time_callable` returns them.
        confidence: the statistical interval's confidence.
        paired: both were timed in the same round-robin loop (the i-th samples share a round).
        margin: the run-to-run margin the interval is widened by (see :data:`RUN_TO_RUN_MARGIN`).

    Returns:
        ``value``; ``low`` and ``high``, the statistical interval widened by ``margin``;
        ``statistical`` (its ``low`` and ``high`` before widening), ``confidence`` (achieved),
        ``paired``, ``method``, ``margin`` and ``tie`` (the interval includes 1: neither a
        speed-up nor a slow-down is shown); ``None`` when either record has no samples.
    """
    base, new = baseline.get("samples"), stage.get("samples")
    if not base or not new:
        return None
    paired = paired and len(base) == len(new)
    if paired:
        interval, method = paired_ratio_interval(base, new, confidence), PAIRED_SPEEDUP_METHOD
    else:
        interval, method = ratio_of_medians_interval(base, new, confidence), INDEPENDENT_SPEEDUP_METHOD
    low, high = interval.low / (1.0 + margin), interval.high * (1.0 + margin)
    return Speedup(
        value=interval.estimate,
        low=low,
        high=high,
        statistical=SpeedupInterval(low=interval.low, high=interval.high),
        confidence=interval.confidence,
        paired=paired,
        method=method,
        margin=margin,
        tie=low <= 1.0 <= high,
    )
