"""Reports on a terminal (rich): a run's stage table, and ``optkit info``'s tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from optkit.reporting.tables import COLUMNS, data_note, drift_warning, format_count, shown_columns, stage_rows, timing_lines

if TYPE_CHECKING:
    from optkit.results import RunReport

__all__ = ["STATUS_STYLE", "print_report", "render_info"]

#: rich styles of stage statuses.
STATUS_STYLE = {"ok": "green", "failed": "bold red", "interrupted": "yellow", "skipped": "dim"}


#: Dropped, in this order, when a terminal is too narrow for the whole table (the speed-up and its
#: interval stay whole: a truncated interval would be worse than none).
_OPTIONAL_COLUMNS = ("GMACs", "time s", "sparsity", "Δparams", "size MB", "#", "cosine", "top-1", "max|Δ|", "GFLOPs", "agreement", "params")


def _stage_table(report: RunReport, columns: list[str]) -> Table:
    table = Table(title=f"optkit · {report.pipeline.model.get('source')} · {report.environment.device}")
    for column in columns:
        table.add_column(column, justify="left" if column in ("stage", "status") else "right", no_wrap=True)
    for row in stage_rows(report):
        style = STATUS_STYLE.get(row["status"]) if row["status"] != "ok" else None
        table.add_row(*(row[c] for c in columns), style=style)
    return table


def _natural_width(console: Console, table: Table) -> int:
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def print_report(report: RunReport, console: Console, run_dir: str) -> None:
    """Print the stage table and where the report files are.

    Rich squeezes a table into the console's width, which makes 15 columns unreadable at 80:
    a narrow terminal loses the optional columns first; a file or pipe (no width of its own)
    gets the table at its natural width.
    """
    all_columns = shown_columns(COLUMNS, stage_rows(report))
    columns = list(all_columns)
    table = _stage_table(report, columns)
    if console.is_terminal:
        for optional in _OPTIONAL_COLUMNS:
            if _natural_width(console, table) <= console.width:
                break
            if optional in columns:
                columns.remove(optional)
                table = _stage_table(report, columns)
        console.print(table)
        hidden = [c for c in all_columns if c not in columns]
        if hidden:
            console.print(f"(terminal too narrow: {', '.join(hidden)} hidden; report.md has every column)", style="dim")
    else:
        # print(width=) can only narrow; a pipe or file has no width of its own to respect.
        console.width = max(console.width, _natural_width(console, table))
        console.print(table)
    console.print("GFLOPs = 2 × GMACs (thop counts multiply-accumulates). Drift is against the baseline.", style="dim")
    if data_note(report):
        console.print(data_note(report), style="dim")
    if drift_warning(report):
        console.print(drift_warning(report), style="bold yellow", highlight=False)
    for line in timing_lines(report):
        console.print(line, style="bold yellow" if line.startswith(("Warning", "Side-by-side")) else "dim", highlight=False)
    console.print(f"Report: {run_dir}/report.json, {run_dir}/report.md · status: {report.status}")


def render_info(info: dict[str, Any], console: Any) -> None:
    """Print ``info`` (from ``optkit info``) as rich tables on ``console``."""
    inputs = info.get("inputs") or []
    if len(inputs) > 1 or any(spec["dtype"] != "float32" for spec in inputs):
        shown = "inputs " + ", ".join(f"{spec['name']} {spec['shape']} {spec['dtype']}" for spec in inputs)
    else:
        shown = f"input {info['input_shape']}"
    summary = Table(title=f"{info['model']} · {shown} · {info['device']}", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    sparsity = info.get("sparsity")
    summary.add_row("parameters", f"{info['params']:,} ({info['trainable_params']:,} trainable)")
    summary.add_row("non-zero", f"{info['nonzero_params']:,}" + (f" (sparsity {sparsity:.2%})" if sparsity is not None else ""))
    summary.add_row("MACs", f"{format_count(info['macs'])} ({info['gmacs']:.3f} GMACs)")
    summary.add_row("GFLOPs", f"{info['gflops']:.3f} (= 2 × GMACs)")
    summary.add_row("state_dict size", f"{info['size_bytes'] / 1e6:.2f} MB")
    latency = info.get("latency_ms")
    if latency:
        summary.add_row(
            "latency",
            f"p50 {latency['p50']:.2f} ms [{latency['p50_interval']['low']:.2f}–{latency['p50_interval']['high']:.2f}] · "
            f"p10 {latency['p10']:.2f} · p90 {latency['p90']:.2f} · mean {latency['mean']:.2f} ± {latency['std']:.2f} "
            f"(n {latency['n']}, warm-up {latency['warmup']}, batch {latency['batch']}, {latency['threads']} threads, {latency['timer']})",
        )
    accuracy = info.get("accuracy")
    if accuracy:
        top5 = f" · top-5 {accuracy['top5']:.2%}" if "top5" in accuracy else ""
        summary.add_row("accuracy", f"top-1 {accuracy['top1']:.2%}{top5} (n {accuracy['n']}, {info['data']['source']})")
    elif "data" in info:
        summary.add_row("accuracy", f"– ({info['data']['source']} has no labels)")
    if "peak_memory_bytes" in info:
        summary.add_row("peak CUDA memory", f"{info['peak_memory_bytes'] / 2**20:.1f} MiB")
    if info.get("uncounted"):
        summary.add_row("uncounted", ", ".join(f"{k} ×{v}" for k, v in info["uncounted"].items()))
    summary.caption = info["unit"]
    console.print(summary)
    if "parameters" in info:
        table = Table(title="parameters")
        for column in ("layer", "name", "gradient", "parameters", "shape", "mu", "sigma"):
            table.add_column(
                column,
                justify="right" if column in ("layer", "parameters", "mu", "sigma") else "left",
                overflow="fold" if column == "name" else "ellipsis",
            )
        for row in info["parameters"]:
            table.add_row(
                str(row["index"]),
                row["name"],
                str(row["trainable"]),
                f"{row['params']:,}",
                str(row["shape"]),
                "–" if row["mean"] is None else f"{row['mean']:.3g}",
                "–" if row["std"] is None else f"{row['std']:.3g}",
            )
        console.print(table)
        layers = Table(title="MACs per layer (a module's MACs include its children's; self: its own rule or code)")
        # Names are folded onto more lines when the table is wider than the console, never cut.
        layers.add_column("module", overflow="fold")
        layers.add_column("type", overflow="fold")
        for column in ("MACs", "share", "self"):
            layers.add_column(column, justify="right", no_wrap=True)
        layers.add_column("counted by", no_wrap=True)
        total = info["macs"] or 1
        for row in info["layer_macs"]:
            self_macs = f"{row['self_macs']:,}" if row["self_macs"] else "–"
            layers.add_row(row["module"], row["type"], f"{row['macs']:,}", f"{row['macs'] / total:.1%}", self_macs, row["counted_by"])
        console.print(layers)
    warning = (info.get("thop") or {}).get("warning")
    if warning:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
