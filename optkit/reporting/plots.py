"""Comparison plots as PNG bytes (matplotlib, imported only when a plot is drawn).

- latency against GMACs, one point per measured stage, coloured by stage;
- the speed-up each pass bought (its stage's latency against the previous stage's), per model,
  with the speed-up's confidence interval as an error bar; a tie (the interval includes 1×) is
  drawn hatched and pale, not as a finding.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

from optkit.errors import OptkitError
from optkit.results import ComparedRun, Speedup

__all__ = ["StagePoint", "stage_points", "latency_vs_gmacs_png", "pass_speedups_png", "PlotsUnavailable", "pyplot", "figure_png"]

log = logging.getLogger(__name__)

_MARKERS = "osD^vP*X<>"


class PlotsUnavailable(OptkitError):
    """matplotlib is not installed."""

    exit_code = 2


@dataclass(frozen=True)
class StagePoint:
    """One measured stage of one run, as plotted.

    Attributes:
        model, pipeline, device: the run's labels.
        stage: the stage name (``baseline``, ``fuse_bn``, ...).
        gmacs: GMACs of the stage (``None`` where not counted).
        p50_ms: median latency.
        speedup_vs_previous: the speed-up over the previous measured stage (``None`` for the
            baseline): the run's ``speedup_vs_previous`` figure, or the p50 ratio in reports
            written before speed-ups had intervals.
        speedup_low, speedup_high: its interval (``None`` when the report has none).
        tie: the interval includes 1×.
    """

    model: str
    pipeline: str
    device: str
    stage: str
    gmacs: float | None
    p50_ms: float
    speedup_vs_previous: float | None
    speedup_low: float | None = None
    speedup_high: float | None = None
    tie: bool = False


def stage_points(runs: list[ComparedRun]) -> list[StagePoint]:
    """Every stage measured ``ok`` with a latency, in run and stage order."""
    points = []
    for run in runs:
        previous: float | None = None
        for stage in run.report.stages:
            p50 = stage.metrics.latency_ms.p50 if stage.metrics.latency_ms is not None else None
            if stage.status != "ok" or not p50:
                continue
            figure = stage.metrics.speedup_vs_previous or Speedup(value=None)
            measured = figure.value if figure.value is not None else (previous / p50 if previous is not None else None)
            ratio = None if previous is None or stage.index == 0 else measured
            points.append(
                StagePoint(
                    run.model,
                    run.pipeline,
                    run.device,
                    stage.name,
                    stage.metrics.gmacs,
                    p50,
                    ratio,
                    figure.low,
                    figure.high,
                    bool(figure.tie),
                )
            )
            previous = p50
    return points


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, never a window).

    Raises:
        PlotsUnavailable: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable("plots need matplotlib: pip install 'optkit[plots]'") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Any) -> bytes:
    """``fig`` as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buffer.getvalue()


def latency_vs_gmacs_png(points: list[StagePoint]) -> bytes | None:
    """Log-log scatter of p50 latency against GMACs, one colour per stage, one marker per device.

    Returns:
        PNG bytes, or ``None`` when no point has both figures.
    """
    points = [p for p in points if p.gmacs]
    if not points:
        return None
    plt = pyplot()
    stages = list(dict.fromkeys(p.stage for p in points))
    devices = list(dict.fromkeys(p.device for p in points))
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(9, 6))
    for si, stage in enumerate(stages):
        for di, device in enumerate(devices):
            chosen = [p for p in points if p.stage == stage and p.device == device]
            if chosen:
                label = stage if len(devices) == 1 else f"{stage} · {device}"
                ax.scatter(
                    [p.gmacs for p in chosen],
                    [p.p50_ms for p in chosen],
                    label=label,
                    alpha=0.8,
                    color=colors(si % 10),
                    marker=_MARKERS[di % len(_MARKERS)],
                )
    named: set[tuple[str, str]] = set()
    for p in points:
        if p.stage == "baseline" and (p.model, p.device) not in named:
            named.add((p.model, p.device))
            ax.annotate(p.model, (p.gmacs, p.p50_ms), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="GMACs (multiply-accumulates, thop)",
        ylabel="p50 latency (ms)",
        title="Latency against compute, every stage",
    )
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks collide on a log axis
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return figure_png(fig)


def _times(value: float, _position: int) -> str:
    """Tick labels of a ratio axis: ``0.5×``, ``2×`` (not ``5×10⁻¹``)."""
    return f"{value:.2g}×"


def _ratio(point: StagePoint) -> float:
    """The speed-up of a point that has one (the plot keeps only those)."""
    if point.speedup_vs_previous is None:
        raise ValueError(f"{point.model} {point.stage}: no speed-up to plot")
    return point.speedup_vs_previous


def pass_speedups_png(points: list[StagePoint]) -> bytes | None:
    """Grouped bars, one panel per pipeline (and device): per model, each pass's speed-up over the stage before.

    Returns:
        PNG bytes, or ``None`` when no pass stage was timed.
    """
    points = [p for p in points if p.speedup_vs_previous is not None]
    if not points:
        return None
    plt = pyplot()
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    ratio_labels = FuncFormatter(_times)
    panels = list(dict.fromkeys((p.pipeline, p.device) for p in points))
    several_devices = len({device for _, device in panels}) > 1
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(7.0, 0.7 * len({p.model for p in points}) + 3), 3.2 * len(panels)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, (pipeline, device) in zip(axes[:, 0], panels, strict=True):
        chosen = [p for p in points if p.pipeline == pipeline and p.device == device]
        models = list(dict.fromkeys(p.model for p in chosen))
        stages = list(dict.fromkeys(p.stage for p in chosen))
        width = 0.8 / len(stages)
        for si, stage in enumerate(stages):
            by_model = {p.model: p for p in chosen if p.stage == stage}
            drawn = [(mi + (si - (len(stages) - 1) / 2) * width, by_model[m]) for mi, m in enumerate(models) if m in by_model]
            xs = [x for x, _ in drawn]
            heights = [_ratio(p) - 1.0 for _, p in drawn]  # bars grow from 1×, down for slow-downs
            bars = ax.bar(xs, heights, bottom=1.0, width=width, color=colors(si % 10))
            for bar, (_, point) in zip(bars, drawn, strict=True):
                if point.tie:  # not a finding: pale and hatched
                    bar.set_alpha(0.35)
                    bar.set_hatch("//")
            with_interval = [
                (x, _ratio(p), p.speedup_low, p.speedup_high) for x, p in drawn if p.speedup_low is not None and p.speedup_high is not None
            ]
            if with_interval:
                ax.errorbar(
                    [x for x, *_ in with_interval],
                    [ratio for _, ratio, _, _ in with_interval],
                    yerr=[
                        [max(0.0, ratio - low) for _, ratio, low, _ in with_interval],
                        [max(0.0, high - ratio) for _, ratio, _, high in with_interval],
                    ],
                    fmt="none",
                    ecolor="black",
                    elinewidth=0.8,
                    capsize=2,
                )
        ax.set_yscale("log")  # speed-ups are ratios: 2× and 0.5× lie as far from 1
        ax.yaxis.set_major_formatter(ratio_labels)
        ax.yaxis.set_minor_formatter(ratio_labels)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("speed-up vs previous stage")
        ax.text(0.01, 0.98, "error bars: the speed-up's confidence interval", transform=ax.transAxes, fontsize=7, va="top", color="#555")
        ax.set_title(f"{pipeline}" + (f" · {device}" if several_devices else ""), fontsize=10)
        handles = [Patch(color=colors(si % 10), label=stage) for si, stage in enumerate(stages)]
        if any(p.tie for p in chosen):  # the bars' own patches would show the first bar's look, tie or not
            handles.append(Patch(facecolor="white", edgecolor="grey", hatch="//", label="tie (interval includes 1×)"))
        ax.legend(handles=handles, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)
