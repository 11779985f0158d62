"""Reports as rows: the stage table of one run, and the tables that compare several runs.

Every value is formatted for people here, once, so that the console, Markdown and HTML show
the same figures.
"""

from __future__ import annotations

from typing import Any

from optkit.measure.cpu import CpuInfo
from optkit.results import ComparedRun, Drift, Environment, NoiseCheck, RunReport, Speedup, StageMetrics

__all__ = [
    "COLUMNS",
    "DATA_COLUMNS",
    "DATA_NOTE",
    "shown_columns",
    "data_note",
    "drift_warning",
    "COMPARISON_COLUMNS",
    "format_count",
    "format_speedup",
    "timing_lines",
    "noise_warning",
    "stage_rows",
    "environment_line",
    "comparison_columns",
    "comparison_rows",
    "final_speedup",
    "final_speedup_figure",
    "speedup_table",
    "environment_groups",
    "environment_text",
    "comparison_note",
    "short_text",
    "weights_line",
    "weights_partly_loaded",
]

#: Column titles of the stage table (console and Markdown).
COLUMNS = (
    "#",
    "stage",
    "status",
    "params",
    "Δparams",
    "sparsity",
    "GMACs",
    "GFLOPs",
    "size MB",
    "p50 ms",
    "speed-up",
    "accuracy",
    "agreement",
    "max|Δ|",
    "cosine",
    "top-1",
    "time s",
)
#: Columns measured on data.eval: shown only when some stage has them.
DATA_COLUMNS = ("accuracy", "agreement")


def shown_columns(columns: tuple[str, ...], rows: list[dict[str, str]]) -> tuple[str, ...]:
    """``columns`` less the data columns no row has a value in (runs without ``data.eval``)."""
    empty = {c for c in DATA_COLUMNS if all(row.get(c, "–") in ("–", "") for row in rows)}
    return tuple(c for c in columns if c not in empty)


def format_count(n: int | None) -> str:
    """``25557032`` as ``25.56M``."""
    if n is None:
        return "–"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}"
    return str(n)


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def format_speedup(figure: Speedup | dict[str, Any] | None, ratio: float | None = None) -> str:
    """A speed-up with its interval: ``1.13× [1.08–1.19]``; ``tie [0.95–1.04]`` when the interval includes 1.

    Args:
        figure: a stage's ``speedup`` record (``value``, ``low``, ``high``, ``tie``).
        ratio: the p50 ratio, for reports written before speed-ups had intervals (shown as such).
    """
    if isinstance(figure, dict):
        figure = Speedup.model_validate(figure)
    if figure is None or figure.low is None or figure.high is None or figure.value is None:
        return "–" if ratio is None else f"{ratio:.2f}× (no interval)"
    bounds = f"[{_ratio_bound(figure.low)}–{_ratio_bound(figure.high)}]"
    return f"tie {bounds}" if figure.tie else f"{figure.value:.2f}× {bounds}"


def _ratio_bound(value: float) -> str:
    """Two decimals, or three where two would round a bound onto 1 (``0.998``, not ``1.00``)."""
    text = f"{value:.2f}"
    return f"{value:.3f}" if text == "1.00" and value != 1.0 else text


def timing_lines(report: RunReport) -> list[str]:
    """How latency was timed, in words, and a warning when the noise check found the machine busy."""
    timing = report.timing
    if not timing:
        return []
    confidence = timing.confidence if timing.confidence is not None else 0.95
    if timing.compare == "interleaved":
        how = (
            f"Latency: the baseline and every stage timed side by side, round-robin ({timing.iters} rounds); "
            "speed-up = median of the per-round ratios"
        )
    else:
        how = f"Latency: each stage timed alone right after it was applied ({timing.iters} calls); speed-up = ratio of medians"
    margin = timing.run_to_run_margin  # absent in reports written before the margin
    widened = f", widened by {margin:.0%} for run-to-run variation" if margin else ""
    lines = [f"{how}, with its {confidence:.0%} interval{widened}; 'tie' = the interval includes 1× (no speed-up or slow-down shown)."]
    if timing.status in ("failed", "interrupted"):
        lines.append(f"Side-by-side timing {timing.status}: {timing.error or 'Ctrl-C'}; stages have no latency.")
    warning = noise_warning(timing.noise)
    return lines + ([warning] if warning else [])


def noise_warning(noise: NoiseCheck | dict[str, Any] | None) -> str | None:
    """The warning for a noise check (:func:`optkit.measure.noise.check_noise`) that found the machine busy, else ``None``."""
    if noise is None:
        return None
    noise = NoiseCheck.model_validate(noise)
    if not noise.noisy:
        return None
    why = noise.why or f"its timings varied by {noise.cv or 0:.0%} (CV, above {noise.max_cv or 0:.0%})"
    return f"Warning: the machine was busy before timing: a fixed workload: {why}; latency figures are noisy."


def _ratio(new: float | None, old: float | None, fmt: str = "+.1%") -> str:
    if new is None or old in (None, 0):
        return "–"
    return format(new / old - 1, fmt)


def stage_rows(report: RunReport) -> list[dict[str, str]]:
    """One row per stage, every value formatted, deltas against the baseline."""
    base = report.baseline.metrics if report.baseline is not None else StageMetrics()
    base_latency = _p50(base)
    rows = []
    for stage in report.stages:
        m = stage.metrics
        latency = _p50(m)
        drift = m.drift or Drift()
        rows.append(
            {
                "#": str(stage.index),
                "stage": stage.name + (" (onnxruntime)" if m.runtime == "onnxruntime" else ""),
                "status": str(stage.status),
                "params": format_count(m.params),
                "Δparams": "" if stage.index == 0 else _ratio(m.params, base.params),
                "sparsity": _num(m.sparsity, ".1%"),
                "GMACs": _num(m.gmacs, ".3f"),
                "GFLOPs": _num(m.gflops, ".3f"),
                "size MB": _num(m.size_bytes / 1e6 if m.size_bytes is not None else None, ".2f"),
                "p50 ms": _num(latency, ".2f"),
                "speed-up": ""
                if stage.index == 0 or latency is None or not base_latency
                else format_speedup(m.speedup, base_latency / latency),
                "accuracy": _num(m.accuracy.top1 if m.accuracy else None, ".2%"),
                "agreement": _num(m.agreement.top1 if m.agreement else None, ".2%"),
                "max|Δ|": _num(drift.max_abs, ".2e"),
                "cosine": _num(drift.cosine, ".6f"),
                "top-1": _num(drift.top1_agreement, ".0%"),
                "time s": _num(stage.duration_s if stage.status != "skipped" else None, ".2f"),
            }
        )
    return rows


def _p50(metrics: StageMetrics) -> float | None:
    return metrics.latency_ms.p50 if metrics.latency_ms is not None else None


def environment_line(report: RunReport) -> str:
    env = report.environment
    return f"optkit {report.optkit_version} · torch {env.torch} · device {env.device} · {env.threads} threads · python {env.python}"


def weights_line(account: dict[str, Any]) -> str:
    """The ``weights`` account of a baseline (see :mod:`optkit.models.weights`) as one line a person reads.

    Example:
        >>> weights_line({"path": "runs/best.pt", "filled": 0.5556, "tensors": {"model": 9, "loaded": 5, "missing": 4}})
        'best.pt: 5 of 9 tensors loaded (56%); 4 missing'
    """
    tensors = account.get("tensors", {})
    parts = [
        f"{tensors.get(key)} {label}"
        for key, label in (
            ("missing", "missing"),
            ("unexpected", "unexpected"),
            ("shape_mismatched", "shape-mismatched"),
            ("excluded", "excluded"),
            ("bn_counters_reset", "BatchNorm counters reset"),
        )
        if tensors.get(key)
    ]
    name = str(account.get("path", "?")).replace("\\", "/").rsplit("/", 1)[-1]
    loaded = f"{tensors.get('loaded')} of {tensors.get('model')} tensors loaded ({account.get('filled', 0):.0%})"
    return f"{name}: {loaded}" + (f"; {', '.join(parts)}" if parts else "")


def weights_partly_loaded(account: dict[str, Any]) -> bool:
    """Whether a ``weights`` account left model tensors unfilled or checkpoint tensors unused."""
    tensors = account.get("tensors", {})
    return account.get("filled", 1.0) < 1.0 or any(tensors.get(k) for k in ("missing", "unexpected", "shape_mismatched"))


def short_text(value: Any, limit: int = 300) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: Column titles of the comparison table; ``device`` is shown only when the runs differ in it.
COMPARISON_COLUMNS = (
    "model",
    "pipeline",
    "device",
    "stage",
    "status",
    "params",
    "GMACs",
    "p50 ms",
    "speed-up",
    "accuracy",
    "agreement",
    "max|Δ|",
    "cosine",
    "top-1",
)


def comparison_columns(runs: list[ComparedRun]) -> tuple[str, ...]:
    """The comparison table's columns: ``device`` only when the runs were not all on one device,
    accuracy and agreement only when some run measured them."""
    columns = shown_columns(COMPARISON_COLUMNS, comparison_rows(runs))
    if _several_devices(runs):
        return columns
    return tuple(c for c in columns if c != "device")


def _several_devices(runs: list[ComparedRun]) -> bool:
    return len({run.device for run in runs if run.device}) > 1


def comparison_rows(runs: list[ComparedRun]) -> list[dict[str, str]]:
    """One row per stage of every run (formatted as in :func:`stage_rows`); a run without stages gets one row."""
    rows = []
    for run in runs:
        labels = {"model": run.model, "pipeline": run.pipeline, "device": run.device}
        stages = stage_rows(run.report) or [{"stage": "–", "status": run.report.status}]
        rows += [{c: "" for c in COMPARISON_COLUMNS} | labels | {k: v for k, v in row.items() if k in COMPARISON_COLUMNS} for row in stages]
    return rows


def final_speedup(report: RunReport) -> float | None:
    """p50 latency of the baseline over that of the last stage measured ``ok`` (``None`` if either is missing)."""
    timed = [(s.index, p50) for s in report.stages if s.status == "ok" and (p50 := _p50(s.metrics))]
    if len(timed) < 2 or timed[0][0] != 0:
        return None
    return timed[0][1] / timed[-1][1]


def final_speedup_figure(report: RunReport) -> Speedup | None:
    """The ``speedup`` record (with its interval) of the stage :func:`final_speedup` compares, if it has one."""
    timed = [s for s in report.stages if s.status == "ok" and _p50(s.metrics)]
    return timed[-1].metrics.speedup if len(timed) >= 2 and timed[0].index == 0 else None


def speedup_table(runs: list[ComparedRun]) -> tuple[list[str], list[list[str]]]:
    """Models (by device when several) × pipelines: the final speed-up of each run, or why there is none.

    Returns:
        The header (``model`` then each pipeline) and one row per model.
    """
    several_devices = _several_devices(runs)
    pipelines = list(dict.fromkeys(run.pipeline for run in runs))
    cells: dict[str, dict[str, str]] = {}
    for run in runs:
        key = f"{run.model} ({run.device})" if several_devices else run.model
        if run.report.status != "ok":
            failed = next((s.name for s in run.report.stages if s.status in ("failed", "interrupted")), None)
            text = f"{run.report.status} at {failed}" if failed else run.report.status
        else:
            text = format_speedup(final_speedup_figure(run.report), final_speedup(run.report))
        cells.setdefault(key, {})[run.pipeline] = text
    header = ["model", *pipelines]
    return header, [[model, *(row.get(p, "") for p in pipelines)] for model, row in cells.items()]


def environment_groups(runs: list[ComparedRun]) -> list[tuple[Environment, int]]:
    """The distinct environments of ``runs`` (ignoring runs that recorded none) and how many runs each has."""
    groups: list[tuple[Environment, int]] = []
    for run in runs:
        env = run.report.environment
        if not env:
            continue
        for i, (known, count) in enumerate(groups):
            if known == env:
                groups[i] = (known, count + 1)
                break
        else:
            groups.append((env, 1))
    return groups


def environment_text(env: Environment) -> str:
    """One line: device, threads, the CPU with its instruction sets, platform and library versions."""
    libraries = {
        "python": env.python,
        "torch": env.torch,
        "torchvision": env.torchvision,
        "onnx": env.onnx,
        "onnxruntime": env.onnxruntime,
        "thop": env.thop,
        "cuda": env.cuda,
    }
    versions = " · ".join(f"{name} {version}" for name, version in libraries.items() if version)
    cpu = CpuInfo.from_dict(env.cpu).describe() if env.cpu else env.processor
    return f"device **{env.device}** · {env.threads} threads · {cpu} · {env.platform} · {versions}"


def comparison_note(runs: list[ComparedRun]) -> str:
    """How many runs are ok, how they were timed, and how to read the figures."""
    ok = sum(run.report.status == "ok" for run in runs)
    modes = {mode: sum(run.report.timing.compare == mode for run in runs) for mode in ("interleaved", "sequential")}
    timed = ", ".join(f"{count} {mode}" for mode, count in modes.items() if count)
    busy = sum(bool(run.report.timing.noise and run.report.timing.noise.noisy) for run in runs)
    return (
        f"{len(runs)} runs, {ok} ok, {len(runs) - ok} not ok. MACs are multiply-accumulates (thop's unit); "
        "GFLOPs = 2 × GMACs. Latency is the median (p50) of timed runs; speed-up is against the run's own "
        "baseline, measured in the same process, with its confidence interval (95% unless the run set "
        "measure.confidence); 'tie' when the interval (widened by measure.run_to_run_margin) includes 1× (neither a speed-up nor a slow-down)."
        + (f" Timing: {timed} (interleaved: every stage timed side by side with the baseline)." if timed else "")
        + (f" {busy} of {len(runs)} runs found the machine busy before timing (noise check): their figures are noisy." if busy else "")
        + (DATA_NOTE if any(_has_data(run.report) for run in runs) else "")
    )


#: What the data columns mean (said wherever they are shown).
DATA_NOTE = (
    " Accuracy is top-1 on data.eval; agreement is the share of data.eval samples whose top-1 equals the "
    "baseline's. top-1 (like max|Δ| and cosine) compares outputs on the one seeded measurement batch."
)


def _has_data(report: RunReport) -> bool:
    return any(s.metrics.accuracy is not None or s.metrics.agreement is not None for s in report.stages)


def drift_warning(report: RunReport) -> str | None:
    """The baseline's warning that drift compares empty or input-independent outputs, or ``None``."""
    drift = report.stages[0].metrics.drift if report.stages else None
    return f"Warning: {drift.warning}" if drift is not None and drift.warning else None


def data_note(report: RunReport) -> str:
    """:data:`DATA_NOTE` when the report has accuracy or agreement, else ``""``."""
    return DATA_NOTE.strip() if _has_data(report) else ""
