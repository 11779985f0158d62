"""The ``optkit`` command line. Heavy modules (torch, plugins) load inside commands, never at import,
so ``optkit --help`` stays fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from optkit.errors import OptkitError

__all__ = ["main", "cli"]

EXIT_CODES = """\b
Exit codes:
  0    success
  1    a stage failed (earlier stages and a partial report are kept)
  2    usage, pipeline-file or plugin error (nothing was run)
  130  interrupted (Ctrl-C; the partial report is kept)"""


class _Group(click.Group):
    """Turns optkit errors into a one-line message and their exit code, Ctrl-C into 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OptkitError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="yellow", err=True)
            ctx.exit(130)


@click.group(cls=_Group, epilog=EXIT_CODES)
@click.version_option(package_name="optkit", prog_name="optkit")
def cli() -> None:
    """optkit: run optimization passes over a PyTorch model and measure every stage.

    \b
    optkit run examples/resnet18.yaml     run a pipeline, print the stage table
    optkit validate PIPELINE              check a pipeline file without running it
    optkit passes                         list installed passes and broken plugins
    """


def _host() -> Any:
    from optkit.host import Host

    return Host()


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@cli.command(epilog=EXIT_CODES)
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--device", help="auto | cpu | cuda | cuda:N | N (overrides the file).")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Run folder (overrides the file).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run in the output folder instead of using FOLDER-2.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout (progress goes to stderr).")
def run(pipeline: Path, device: str | None, output: Path | None, overwrite: bool, as_json: bool) -> None:
    """Run PIPELINE: load the model, measure a baseline, apply and measure each stage."""
    from optkit.console import ConsoleProgress, print_report
    from optkit.pipeline import load_pipeline
    from optkit.runner import run_pipeline

    host = _host()
    spec = load_pipeline(pipeline, host)
    console = _stderr_console()
    host.pm.register(ConsoleProgress(console), name="optkit-console")
    report, run_dir = run_pipeline(spec, host, device=device, output=output, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        from rich.console import Console

        print_report(report, Console(), str(run_dir))
    sys.exit({"ok": 0, "failed": 1, "interrupted": 130}.get(report.status, 1))


@cli.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
def validate(pipeline: Path) -> None:
    """Check PIPELINE (YAML, keys, passes, options) without running it."""
    from optkit.pipeline import load_pipeline

    spec = load_pipeline(pipeline, _host())
    stages = ", ".join(s.pass_name for s in spec.stages) or "no passes"
    click.echo(f"{pipeline}: ok — {spec.model.source}, {len(spec.stages)} stage(s): {stages}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def passes(as_json: bool) -> None:
    """List installed passes (name, summary, plugin) and plugins that failed to load."""
    host = _host()
    registry = host.passes
    rows = [
        {
            "name": e.name,
            "summary": e.obj.summary,
            "preserves_outputs": e.obj.preserves_outputs,
            "plugin": e.plugin.name,
            "distribution": e.plugin.distribution,
            "version": e.plugin.version,
        }
        for e in registry
    ]
    broken = [
        {"plugin": r.name, "distribution": r.distribution, "version": r.version, "error": r.error,
         "disable": r.disable_hint}
        for r in host.broken
    ]
    conflicts = {name: registry.conflict_message(name) for name in registry.conflicts}
    if as_json:
        click.echo(json.dumps({"passes": rows, "broken": broken, "conflicts": conflicts}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="optkit passes")
    for column in ("name", "summary", "plugin"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["summary"], f"{row['distribution'] or row['plugin']} {row['version'] or ''}".strip())
    console.print(table)
    for message in conflicts.values():
        console.print(f"[red]conflict:[/red] {message}", highlight=False)
    for b in broken:
        console.print(
            f"[red]broken plugin[/red] {b['plugin']!r} ({b['distribution']} {b['version']}): {b['error']}\n"
            f"  disable it with {b['disable']}",
            highlight=False,
        )


@cli.command()
def schema() -> None:
    """Print the JSON Schema of pipeline files, every installed pass's options included."""
    from optkit.pipeline import pipeline_json_schema

    click.echo(json.dumps(pipeline_json_schema(_host()), indent=2))


def main() -> None:
    cli(prog_name="optkit")


if __name__ == "__main__":
    main()
