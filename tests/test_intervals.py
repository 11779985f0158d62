"""Confidence intervals of medians and speed-ups: exact order statistics, and coverage by simulation.

A 95% interval must contain the true value in about 95% of repeated experiments. The simulations
draw latency-like (log-normal) samples whose true median or median ratio is known and count how
often the interval holds it; with T trials the count's standard error is sqrt(0.95·0.05/T)
(0.5% at T = 2000, 0.7% at T = 1000), and the bounds below allow about three of them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from optkit.config.pipeline import MeasureSpec
from optkit.measure.intervals import RUN_TO_RUN_MARGIN, median_interval, paired_ratio_interval, ratio_of_medians_interval, speedup
from optkit.results import SpeedupInterval


def _coverage_of_pair(n: int, j: int) -> float:
    """P(x(j) <= median <= x(n+1-j)) = P(j <= B <= n-j), B ~ Binomial(n, 1/2), written out independently."""
    return sum(math.comb(n, k) for k in range(j, n - j + 1)) / 2**n


@pytest.mark.parametrize(("n", "j"), [(6, 1), (10, 2), (20, 6), (50, 18), (100, 40)])
def test_median_interval_takes_the_tightest_order_statistics_that_reach_95_percent(n, j):
    samples = [float(v) for v in np.random.default_rng(n).permutation(np.arange(1, n + 1))]  # x(k) = k
    interval = median_interval(samples)
    assert (interval.low, interval.high) == (j, n + 1 - j)
    assert interval.confidence == pytest.approx(_coverage_of_pair(n, j), rel=1e-12)
    assert interval.confidence >= 0.95 > _coverage_of_pair(n, j + 1)  # one step tighter falls short
    assert interval.estimate == (n + 1) / 2


def test_median_interval_of_a_tiny_sample_is_its_range_with_its_true_coverage():
    interval = median_interval([3.0, 1.0, 2.0])
    assert (interval.low, interval.high, interval.estimate) == (1.0, 3.0, 2.0)
    assert interval.confidence == pytest.approx(1 - 2 / 8)  # below 95%: said, not hidden
    one = median_interval([4.0])
    assert (one.low, one.high, one.confidence) == (4.0, 4.0, 0.0)
    with pytest.raises(ValueError, match="no samples"):
        median_interval([])
    with pytest.raises(ValueError, match="confidence"):
        median_interval([1.0, 2.0], confidence=1.0)


@pytest.mark.parametrize("n", [20, 50])
def test_median_interval_covers_the_true_median_as_often_as_it_says(n):
    rng = np.random.default_rng(1)
    trials = 2000
    hits = sum(median_interval(rng.lognormal(np.log(10.0), 0.5, n).tolist()).contains(10.0) for _ in range(trials))
    assert abs(hits / trials - _coverage_of_pair(n, {20: 6, 50: 18}[n])) < 0.016


def _paired_rounds(rng: np.random.Generator, n: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """n rounds of (baseline, stage) timings: a load factor shared by the round, times each call's own noise."""
    load = rng.lognormal(0.0, 0.4, n)
    return load * rng.lognormal(np.log(10.0 * ratio), 0.1, n), load * rng.lognormal(np.log(10.0), 0.1, n)


@pytest.mark.parametrize("n", [20, 50])
def test_paired_speedup_interval_covers_the_true_ratio(n):
    rng = np.random.default_rng(2)
    trials = 1000
    hits = sum(paired_ratio_interval(*_paired_rounds(rng, n, 1.25)).contains(1.25) for _ in range(trials))
    assert 0.93 <= hits / trials <= 0.99


def test_pairing_cancels_load_that_a_whole_round_shares():
    """Rounds slowed alike by the machine's load: per-round ratios see through it, separate medians do not."""
    rng = np.random.default_rng(3)
    widths = {"paired": [], "independent": []}
    for _ in range(50):
        base, stage = _paired_rounds(rng, 30, 1.25)
        paired, independent = paired_ratio_interval(base, stage), ratio_of_medians_interval(base, stage)
        widths["paired"].append(paired.high - paired.low)
        widths["independent"].append(independent.high - independent.low)
    assert np.median(widths["paired"]) < 0.4 * np.median(widths["independent"])


def test_two_runs_under_different_load_give_overlapping_intervals_and_a_real_change_does_not():
    """The done-when of issue 16, by simulation: the same pipeline timed twice (a quiet run, and one
    three times slower and more erratic) gives overlapping speed-up intervals; a stage that really
    changed (1.25x against 1.75x) does not. On the machine itself: benchmarks/speedup_repeatability.py."""
    rng = np.random.default_rng(5)

    def run(ratio: float, load_median: float, load_sigma: float) -> tuple[float, float]:
        load = rng.lognormal(np.log(load_median), load_sigma, 30)
        interval = paired_ratio_interval(load * rng.lognormal(np.log(10.0 * ratio), 0.1, 30), load * rng.lognormal(np.log(10.0), 0.1, 30))
        return interval.low, interval.high

    def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return max(a[0], b[0]) <= min(a[1], b[1])

    trials = 1000
    same = sum(overlap(run(1.25, 1.0, 0.1), run(1.25, 3.0, 0.6)) for _ in range(trials))
    changed = sum(overlap(run(1.25, 1.0, 0.1), run(1.75, 3.0, 0.6)) for _ in range(trials))
    assert same / trials >= 0.98 and changed / trials <= 0.05, (same, changed)


@pytest.mark.parametrize("n", [20, 50])
def test_independent_speedup_interval_covers_the_true_ratio(n):
    rng = np.random.default_rng(4)
    trials = 400
    hits = 0
    for _ in range(trials):
        base, stage = rng.lognormal(np.log(12.5), 0.2, n), rng.lognormal(np.log(10.0), 0.2, n)
        hits += ratio_of_medians_interval(base, stage).contains(1.25)
    assert 0.91 <= hits / trials <= 0.99  # the percentile bootstrap is approximate: a little wider bound


def test_bootstrap_is_deterministic_and_its_estimate_is_the_ratio_of_medians():
    rng = np.random.default_rng(5)
    base, stage = rng.lognormal(2.0, 0.3, 40), rng.lognormal(1.8, 0.3, 40)
    first, second = ratio_of_medians_interval(base, stage), ratio_of_medians_interval(base, stage)
    assert first == second  # fixed seed
    assert first.estimate == pytest.approx(np.median(base) / np.median(stage), rel=1e-12)
    # Resampling in chunks (large samples) gives the same medians as in one go: a 5000-sample
    # bootstrap runs in 10 chunks and still brackets the ratio.
    big = ratio_of_medians_interval(np.full(5000, 2.0), np.full(5000, 1.0), resamples=50)
    assert (big.low, big.estimate, big.high) == (2.0, 2.0, 2.0)


def test_speedup_of_latency_records_is_a_tie_when_its_interval_includes_one():
    rng = np.random.default_rng(6)
    same = [float(t) for t in rng.lognormal(np.log(10.0), 0.2, 30)]
    other = [float(t) for t in rng.lognormal(np.log(10.0), 0.2, 30)]
    tie = speedup({"samples": same}, {"samples": other}, paired=True)
    assert tie.tie and tie.low <= 1.0 <= tie.high and tie.paired
    faster = speedup({"samples": [2 * t for t in same]}, {"samples": same}, paired=True)
    assert (faster.value, faster.statistical, faster.tie) == (2.0, SpeedupInterval(low=2.0, high=2.0), False)
    assert (faster.low, faster.high) == (pytest.approx(2.0 / 1.05), pytest.approx(2.0 * 1.05))
    apart = speedup({"samples": same}, {"samples": other[:20]}, paired=True)  # unequal lengths cannot pair
    assert apart.paired is False and apart.method.startswith("timed apart")
    assert speedup({"samples": same}, {"p50": 1.0}, paired=False) is None  # a record without samples
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ratio_interval([1.0, 2.0], [1.0])


def test_a_speedup_interval_is_widened_by_the_run_to_run_margin_and_a_tie_includes_one():
    """Identical copies of a model differ by a few percent with narrow intervals: not a finding."""
    base = [10.0 + 0.01 * k for k in range(30)]
    three_percent = speedup({"samples": [1.03 * t for t in base]}, {"samples": base}, paired=True)
    assert three_percent.margin == RUN_TO_RUN_MARGIN == MeasureSpec().run_to_run_margin == 0.05
    statistical = three_percent.statistical
    assert statistical.low > 1.0  # apart from 1 by the statistics of one run ...
    assert three_percent.low == pytest.approx(statistical.low / 1.05) and three_percent.high == pytest.approx(statistical.high * 1.05)
    assert three_percent.low <= 1.0 <= three_percent.high and three_percent.tie is True  # ... a tie across runs
    bare = speedup({"samples": [1.03 * t for t in base]}, {"samples": base}, paired=True, margin=0.0)
    assert (bare.low, bare.high) == (statistical.low, statistical.high) and bare.tie is False
    slower = speedup({"samples": base}, {"samples": [1.06 * t for t in base]}, paired=True)  # 1/1.06 × 1.05 < 1
    assert slower.high < 1.0 and slower.tie is False
    assert speedup({"samples": base}, {"samples": [1.04 * t for t in base]}, paired=True).tie is True
