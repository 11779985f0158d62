"""Reports as Markdown: one run's ``report.md``, and the comparison of several runs."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from optkit.measure.drift import output_parts
from optkit.reporting.tables import (
    COLUMNS,
    comparison_columns,
    comparison_note,
    comparison_rows,
    data_note,
    drift_warning,
    environment_groups,
    environment_line,
    environment_text,
    short_text,
    shown_columns,
    speedup_table,
    stage_rows,
    timing_lines,
    weights_line,
)
from optkit.results import ComparisonMeta

if TYPE_CHECKING:
    from optkit.results import ComparedRun, RunReport

__all__ = ["render_markdown", "render_comparison_markdown"]


def render_markdown(report: RunReport) -> str:
    """The report as Markdown: environment, the stage table, errors, and each stage's details."""
    model = report.pipeline.model
    rows = stage_rows(report)
    columns = shown_columns(COLUMNS, rows)
    lines = [
        f"# optkit report: {_text(model.get('source', '?'))}",
        "",
        f"Status: **{_text(report.status)}** · input {_text(_inputs_line(model))} · {_text(environment_line(report))}",
        "",
        "MACs are multiply-accumulates (thop's unit); GFLOPs = 2 × GMACs. Latency is the median "
        "of timed runs; speed-up and Δparams are against the baseline; drift is against the baseline."
        + (f" {data_note(report)}" if data_note(report) else ""),
        "",
        *(f"{line}\n" for line in timing_lines(report)),
        *([f"**{drift_warning(report)}**\n"] if drift_warning(report) else []),
        *_markdown_table(columns, [[row[c] for c in columns] for row in rows]),
    ]
    lines += _per_output_lines(report)
    if report.error:
        lines += ["", f"**Error:** {_text(report.error)}"]
    for stage in report.stages:
        if stage.details or stage.artifacts or stage.error:
            lines += ["", f"## {stage.index}. {_text(stage.name)}", ""]
            if stage.error:
                lines.append(f"- error: {_text(stage.error)}")
            lines += [f"- artifact: `{_code(a)}`" for a in stage.artifacts]
            lines += [f"- {_text(key)}: {_text(_detail_text(key, value))}" for key, value in stage.details.items()]
    return "\n".join(lines) + "\n"


def _per_output_lines(report: RunReport) -> list[str]:
    """A table of drift per output tensor (and channel group), for stages with more than one."""
    rows = []
    for stage in report.stages:
        drift = stage.metrics.drift
        parts = output_parts(drift) if drift is not None and drift.outputs else []
        if len(parts) > 1:
            rows += [
                [str(stage.index), stage.name, label, f"{f.max_abs:.2e}", f"{f.reference_max_abs:.3g}", f"{f.cosine:.6f}"]
                for label, f in parts
            ]
    if not rows:
        return []
    return [
        "",
        "## Drift per output",
        "",
        "Against the baseline, on the seeded batch; each part is held to a drift tolerance scaled by its own largest value.",
        "",
        *_markdown_table(["#", "stage", "output", "max|Δ|", "max|reference|", "cosine"], rows),
    ]


def _detail_text(key: str, value: Any) -> str:
    if key == "weights" and isinstance(value, dict) and "tensors" in value:
        return weights_line(value)  # the account in full stays in report.json
    return short_text(value)


def _text(value: Any) -> str:
    """Text optkit did not write (names, sources, errors, details) as Markdown shows it: HTML tags and
    entities escaped (a sweep name cannot put a ``<script>`` into report.md), on one line."""
    return html.escape(str(value), quote=False).replace("\n", " ")


def _code(value: Any) -> str:
    """Text inside a code span: a backtick would end it."""
    return str(value).replace("`", "'").replace("\n", " ")


def _markdown_cell(text: Any) -> str:
    return _text(text).replace("|", "\\|")


def _markdown_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(_markdown_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows),
    ]


def render_comparison_markdown(runs: list[ComparedRun], meta: ComparisonMeta | None = None, plots: dict[str, str] | None = None) -> str:
    """Several runs as one Markdown report: environment header, speed-up summary, plots, stage table, errors.

    Args:
        runs: the runs, in the order to show them.
        meta: ``title``, ``command`` (how to reproduce), ``executor``, ``created`` and ``notes``, each optional.
        plots: caption → image path relative to the report.
    """
    meta = meta or ComparisonMeta()
    lines = [f"# {_text(meta.title or 'optkit comparison')}", ""]
    if meta.command:
        lines += ["Reproduce with:", "", "```", _code(meta.command), "```", ""]
    groups = environment_groups(runs)
    lines += ["## Environment", ""]
    lines += [f"- {_text(environment_text(env))}" + (f" ({n} runs)" if len(groups) > 1 else "") for env, n in groups] or [
        "- (no run recorded one)"
    ]
    extra = [f"{key} {value}" for key, value in (("created", meta.created), ("executor", meta.executor)) if value]
    lines += [f"- {_text(' · '.join(extra))}"] if extra else []
    lines += [f"- {_text(note)}" for note in meta.notes or []]
    failed = [run for run in runs if run.report.status != "ok"]
    lines += ["", _text(comparison_note(runs)), ""]
    if runs:
        header, rows = speedup_table(runs)
        lines += ["## Speed-up of each pipeline (last stage vs baseline, with its interval)", "", *_markdown_table(header, rows), ""]
    for caption, path in (plots or {}).items():
        lines += [f"![{caption}]({path})", ""]
    columns = comparison_columns(runs)
    lines += ["## Every stage", "", *_markdown_table(columns, [[row[c] for c in columns] for row in comparison_rows(runs)])]
    if failed:
        lines += ["", "## Errors", ""]
        lines += [
            f"- **{_text(run.model)} / {_text(run.pipeline)}**: {_text(short_text(run.report.error or run.report.status, 600))}"
            for run in failed
        ]
    return "\n".join(lines) + "\n"


def _inputs_line(model: dict[str, Any]) -> str:
    """``model.input_shape``, or each of ``model.inputs`` as ``name [shape] dtype``."""
    inputs = model.get("inputs")
    if not inputs:
        return str(model.get("input_shape"))
    named = inputs.items() if isinstance(inputs, dict) else ((spec.get("name") or f"input{i}", spec) for i, spec in enumerate(inputs))
    return ", ".join(f"{name} {spec['shape']} {spec['dtype']}" for name, spec in named)
