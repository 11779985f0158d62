"""Report rendering: one table of stages with deltas against the baseline, as Markdown or rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optkit.results import RunReport, StageResult

__all__ = ["COLUMNS", "stage_rows", "render_markdown", "format_count"]

#: Column titles of the stage table (console and Markdown).
COLUMNS = (
    "#", "stage", "status", "params", "Δparams", "sparsity", "GMACs", "GFLOPs",
    "size MB", "p50 ms", "speed-up", "max|Δ|", "cosine", "top-1", "time s",
)


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


def _ratio(new: float | None, old: float | None, fmt: str = "+.1%") -> str:
    if new is None or old in (None, 0):
        return "–"
    return format(new / old - 1, fmt)


def stage_rows(report: RunReport) -> list[dict[str, str]]:
    """One row per stage, every value formatted, deltas against the baseline."""
    base = report.baseline.metrics if report.baseline is not None else {}
    base_latency = (base.get("latency_ms") or {}).get("p50")
    rows = []
    for stage in report.stages:
        m = stage.metrics
        latency = (m.get("latency_ms") or {}).get("p50")
        drift = m.get("drift") or {}
        rows.append({
            "#": str(stage.index),
            "stage": stage.name + (" (onnxruntime)" if m.get("runtime") == "onnxruntime" else ""),
            "status": stage.status,
            "params": format_count(m.get("params")),
            "Δparams": "" if stage.index == 0 else _ratio(m.get("params"), base.get("params")),
            "sparsity": _num(m.get("sparsity"), ".1%"),
            "GMACs": _num(m.get("gmacs"), ".3f"),
            "GFLOPs": _num(m.get("gflops"), ".3f"),
            "size MB": _num(m["size_bytes"] / 1e6 if "size_bytes" in m else None, ".2f"),
            "p50 ms": _num(latency, ".2f"),
            "speed-up": "" if stage.index == 0 or latency is None or not base_latency else f"{base_latency / latency:.2f}×",
            "max|Δ|": _num(drift.get("max_abs"), ".2e"),
            "cosine": _num(drift.get("cosine"), ".6f"),
            "top-1": _num(drift.get("top1_agreement"), ".0%"),
            "time s": _num(stage.duration_s if stage.status != "skipped" else None, ".2f"),
        })
    return rows


def _environment_line(report: RunReport) -> str:
    env = report.environment
    return (
        f"optkit {report.optkit_version} · torch {env.get('torch')} · device {env.get('device')} · "
        f"{env.get('threads')} threads · python {env.get('python')}"
    )


def render_markdown(report: RunReport) -> str:
    """The report as Markdown: environment, the stage table, errors, and each stage's details."""
    model = report.pipeline.get("model", {})
    lines = [
        f"# optkit report: {model.get('source', '?')}",
        "",
        f"Status: **{report.status}** · input {model.get('input_shape')} · {_environment_line(report)}",
        "",
        "MACs are multiply-accumulates (thop's unit); GFLOPs = 2 × GMACs. Latency is the median "
        "of timed runs; speed-up and Δparams are against the baseline; drift is against the baseline.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in stage_rows(report)]
    if report.error:
        lines += ["", f"**Error:** {report.error}"]
    for stage in report.stages:
        if stage.details or stage.artifacts or stage.error:
            lines += ["", f"## {stage.index}. {stage.name}", ""]
            if stage.error:
                lines.append(f"- error: {stage.error}")
            lines += [f"- artifact: `{a}`" for a in stage.artifacts]
            lines += [f"- {key}: {_short(value)}" for key, value in stage.details.items()]
    return "\n".join(lines) + "\n"


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"
