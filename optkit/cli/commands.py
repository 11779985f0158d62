"""The ``optkit`` command group and its commands. Heavy modules (torch, plugins) load inside
commands, never at import, so ``optkit --help`` stays fast."""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from optkit.cli.session import STRICT_PLUGINS_ENV, session
from optkit.errors import OptkitError, plain_text

__all__ = ["cli", "STRICT_PLUGINS_ENV"]

EXIT_CODES = """\b
Exit codes:
  0    success
  1    a stage failed (earlier stages and a partial report are kept), or an unexpected error
  2    usage, pipeline-file or plugin error (nothing was run)
  130  interrupted (Ctrl-C; the partial report is kept)
  143  terminated (SIGTERM, as timeout and job schedulers send; the partial report is kept)"""


def _set_flag(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[f"optkit.{param.name}"] = True


def _flag(ctx: click.Context, name: str) -> bool:
    return bool(ctx.meta.get(f"optkit.{name}"))


def _common_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--debug`` and ``--strict-plugins``, accepted before or after the command name."""
    command = click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        callback=_set_flag,
        help="Show the traceback of an error, not only its one-line message.",
    )(command)
    return click.option(
        "--strict-plugins",
        is_flag=True,
        expose_value=False,
        callback=_set_flag,
        help=f"A plugin that fails to load is an error (exit 2); also {STRICT_PLUGINS_ENV}=1.",
    )(command)


class _Group(click.Group):
    """The one place an error escaping a command becomes one line on stderr and an exit code:
    optkit errors their own (2 for usage, pipeline files and plugins), Ctrl-C 130, SIGTERM 143, a file that
    cannot be read or written 1, anything else 1 with a hint at ``--debug``, which adds the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors and exits: click reports them (exit 2 for usage)
        except OptkitError as exc:
            self._report(ctx, str(exc), exc.exit_code)
        except KeyboardInterrupt as exc:  # Ctrl-C (130), or SIGTERM during a run (optkit.run.signals.Terminated: 143)
            click.secho("interrupted", fg="yellow", err=True)
            ctx.exit(getattr(exc, "exit_code", 130))
        except OSError as exc:  # a file or folder that cannot be read or written (report -o, sweep folders)
            where = f"{exc.filename}: " if exc.filename else ""
            self._report(ctx, f"{where}{exc.strerror or exc}", 1)
        # Anything else is a bug here or in a plugin: one line a person can report, not a traceback.
        except Exception as exc:  # noqa: BLE001
            hint = "" if _flag(ctx, "debug") else " (an unexpected error: `optkit --debug ...` shows the traceback)"
            self._report(ctx, f"{type(exc).__name__}: {exc}{hint}", 1)

    @staticmethod
    def _report(ctx: click.Context, message: str, code: int) -> None:
        if _flag(ctx, "debug"):
            click.echo(traceback.format_exc(), err=True, nl=False)
        click.secho(f"error: {plain_text(message)}", fg="red", err=True)
        ctx.exit(code)


@click.group(cls=_Group, epilog=EXIT_CODES)
@click.version_option(package_name="optkit", prog_name="optkit")
@_common_options
def cli() -> None:
    """optkit: run optimization passes over a PyTorch model and measure every stage.

    \b
    optkit run examples/resnet18.yaml     run a pipeline, print the stage table
    optkit validate PIPELINE              check a pipeline file without running it
    optkit passes                         list installed passes and broken plugins
    optkit sources                        list model sources (torchvision:, python:, file:, ...)
    optkit sweep examples/sweep.yaml      run many (model × pipeline) jobs, one combined report
    optkit report RUN_DIR...              compare runs: Markdown, HTML page and plots
    """


def _print_json(data: dict[str, Any]) -> None:
    from optkit.reporting.writing import report_json

    click.echo(report_json(data), nl=False)


def _yaml_mapping(text: str | None, option: str) -> dict[str, Any] | None:
    """A YAML flow mapping given on the command line (``{resize: 36, center_crop: 32}``)."""
    return _yaml_value(text, option, (dict,), "'{resize: 36, center_crop: 32}'")


def _yaml_value(text: str | None, option: str, types: tuple[type, ...], example: str) -> Any:
    """A YAML flow mapping (or list, where ``types`` allows) given on the command line."""
    if text is None:
        return None
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"not YAML: {exc}", param_hint=option) from None
    if not isinstance(value, types):
        kinds = " or ".join("a mapping" if t is dict else "a list" for t in types)
        raise click.BadParameter(f"expected {kinds} such as {example}, got {text!r}", param_hint=option)
    return value


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@cli.command(epilog=EXIT_CODES)
@_common_options
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--device", help="auto | cpu | cuda | cuda:N | N (overrides the file).")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Run folder (overrides the file).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run in the output folder instead of using FOLDER-2.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout (progress goes to stderr).")
@click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Allow full unpickling of the model's checkpoints (whole pickled modules); only for files you trust.",
)
@click.option(
    "--verbose", "-v", is_flag=True, help="Name every loaded, missing, unexpected and mismatched tensor in the report, not only counts."
)
def run(
    pipeline: Path, device: str | None, output: Path | None, overwrite: bool, as_json: bool, trust_checkpoint: bool, verbose: bool
) -> None:
    """Run PIPELINE: load the model, measure a baseline, apply and measure each stage."""
    from optkit.cli.progress import ConsoleProgress
    from optkit.cli.streams import stdout_to_stderr
    from optkit.config.pipeline import load_pipeline
    from optkit.reporting.console import print_report
    from optkit.run.runner import run_pipeline

    host = session().host
    spec = load_pipeline(pipeline, host.get_pass, host.get_source, producers=host.passes_producing, get_dataset=host.get_dataset)
    if trust_checkpoint:
        spec.model.trust_checkpoint = True
    if verbose:
        spec.model.list_keys = True
    console = _stderr_console()
    host.pm.register(ConsoleProgress(console, bars=not as_json), name="optkit-console")  # --json: no bars
    # With --json, stdout holds the report alone: whatever passes or libraries print goes to stderr.
    with stdout_to_stderr() if as_json else contextlib.nullcontext():
        report, run_dir = run_pipeline(spec, host, device=device, output=output, overwrite=overwrite)
    if report.error and not any(stage.error == report.error for stage in report.stages):
        click.secho(f"error: {report.error}", fg="red", err=True)  # not a stage's: the progress did not show it
    if as_json:
        _print_json(report.to_dict())
    else:
        from rich.console import Console

        print_report(report, Console(), str(run_dir))
    if report.status == "interrupted":
        from optkit.run.signals import exit_code_for

        sys.exit(exit_code_for([report.error, *(stage.error for stage in report.stages)]))
    sys.exit({"ok": 0, "failed": 1}.get(report.status, 1))


@cli.command()
@_common_options
@click.argument("pipeline", type=click.Path(path_type=Path))
def validate(pipeline: Path) -> None:
    """Check PIPELINE (YAML, keys, passes, options, model and dataset source schemes) without running it."""
    from optkit.config.pipeline import check_device, load_pipeline

    host = session().host
    spec = load_pipeline(pipeline, host.get_pass, host.get_source, producers=host.passes_producing, get_dataset=host.get_dataset)
    device = str(spec.spec.device).lower()
    if device != "auto":  # auto is decided where the run happens
        check_device(spec, "cpu" if device == "cpu" else "cuda")
    stages = ", ".join(s.pass_name for s in spec.stages) or "no passes"
    click.echo(f"{pipeline}: ok — {spec.model.source}, {len(spec.stages)} stage(s): {stages}")


@cli.command()
@_common_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def passes(as_json: bool) -> None:
    """List installed passes (name, summary, plugin) and plugins that failed to load.

    The exit code is 2 when a plugin is broken and strict plugin mode is on (nothing is listed then).
    """
    host = session().host
    registry = host.passes
    rows: list[dict[str, Any]] = [
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
        {"plugin": r.name, "distribution": r.distribution, "version": r.version, "error": r.error, "disable": r.disable_hint}
        for r in host.broken
    ]
    conflicts = {name: registry.conflict_message(name) for name in registry.conflicts}
    from optkit.measure.thop_distribution import thop_warning

    # Every stage's MACs go through thop's formulas: say when the thop installed is not the validated one.
    thop = thop_warning()
    if as_json:
        click.echo(json.dumps({"passes": rows, "broken": broken, "conflicts": conflicts, "thop_warning": thop}, indent=2))
        return
    console = _registry_table("optkit passes", [(row["name"], row) for row in rows], conflicts, first="name")
    for b in broken:
        console.print(
            f"[red]broken plugin[/red] {b['plugin']!r} ({b['distribution']} {b['version']}): {b['error']}\n"
            f"  disable it with {b['disable']}",
            highlight=False,
        )
    if thop:
        console.print(f"[yellow]warning:[/yellow] {thop}", highlight=False)


@cli.command()
@_common_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sources(as_json: bool) -> None:
    """List model sources (the schemes model.source takes: torchvision:NAME, file:PATH, ...) and dataset
    sources (the schemes of data: entries: imagefolder:PATH, ...), with their plugins."""
    host = session().host
    listed = {"sources": _scheme_rows(host.sources), "datasets": _scheme_rows(host.datasets)}
    conflicts = {name: registry.conflict_message(name) for registry in (host.sources, host.datasets) for name in registry.conflicts}
    if as_json:
        click.echo(json.dumps({**listed, "conflicts": conflicts}, indent=2))
        return
    _registry_table(
        "optkit model sources (model.source: scheme:target)",
        [(f"{row['scheme']}:", row) for row in listed["sources"]],
        conflicts,
        first="scheme",
    )
    _registry_table(
        "optkit dataset sources (data: entries, source: scheme:target)",
        [(f"{row['scheme']}:", row) for row in listed["datasets"]],
        {},
        first="scheme",
    )


def _scheme_rows(registry: Any) -> list[dict[str, Any]]:
    return [
        {
            "scheme": e.name,
            "summary": _first_line(getattr(e.obj, "__doc__", None)),
            "plugin": e.plugin.name,
            "distribution": e.plugin.distribution,
            "version": e.plugin.version,
        }
        for e in registry
    ]


def _registry_table(title: str, rows: list[tuple[str, dict[str, Any]]], conflicts: dict[str, str], first: str) -> Any:
    """Print registered names (label, row) with their summary and plugin, then any conflicts; returns the console."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=title)
    for column in (first, "summary", "plugin"):
        table.add_column(column)
    for label, row in rows:
        table.add_row(label, row["summary"], f"{row['distribution'] or row['plugin']} {row['version'] or ''}".strip())
    console.print(table)
    for message in conflicts.values():
        console.print(f"[red]conflict:[/red] {message}", highlight=False)
    return console


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0].replace("``", "")


@cli.command()
@_common_options
@click.option("--report", "of_report", is_flag=True, help="The JSON Schema of a run's report.json instead (no plugins needed).")
@click.option(
    "--comparison",
    "of_comparison",
    is_flag=True,
    help="The JSON Schema of a comparison's report.json (optkit report, sweeps) instead (no plugins needed).",
)
def schema(of_report: bool, of_comparison: bool) -> None:
    """Print the JSON Schema of pipeline files: every installed pass with its options, and the installed
    model and dataset source schemes (so that editors complete them); with --report, of a run's report.json;
    with --comparison, of a comparison's."""
    if of_report and of_comparison:
        raise click.UsageError("--report and --comparison: give one")
    if of_report or of_comparison:
        from optkit.results import comparison_json_schema, report_json_schema

        click.echo(json.dumps(comparison_json_schema() if of_comparison else report_json_schema(), indent=2))
        return
    from optkit.config.pipeline import pipeline_json_schema

    host = session().host
    schema_ = pipeline_json_schema((entry.obj for entry in host.passes), host.sources.names(), host.datasets.names())
    click.echo(json.dumps(schema_, indent=2))


@cli.command()
@_common_options
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("report"),
    show_default=True,
    help="Folder for report.md, report.html, report.json and plots/.",
)
@click.option("--title", help="Report title.")
def report(runs: tuple[Path, ...], output: Path, title: str | None) -> None:
    """Render one or several RUNS side by side: Markdown, a self-contained HTML page and PNG plots.

    Each of RUNS is a run folder, a sweep or benchmark folder, or a report.json.
    """
    from optkit.reporting.runs import load_runs
    from optkit.reporting.writing import write_comparison_report
    from optkit.results import SCHEMA_VERSION

    def skipped(error: Exception) -> None:  # one unreadable report leaves the others to compare
        click.secho(f"warning: skipped {plain_text(str(error))}", fg="yellow", err=True)

    compared = load_runs(list(runs), on_skip=skipped)
    meta: dict[str, Any] = {"title": title or f"optkit report: {len(compared)} runs", "sources": [str(p) for p in runs]}
    older = [run for run in compared if run.report.schema < SCHEMA_VERSION]
    if older:
        named = ", ".join(run.run_dir or run.model for run in older[:3]) + (", ..." if len(older) > 3 else "")
        note = (
            f"{len(older)} of the runs ({named}) have report.json schema "
            f"{', '.join(sorted({str(run.report.schema) for run in older}))}, written by an older optkit; they are read as "
            f"schema {SCHEMA_VERSION} (schema 1 wrote figures that were not finite as the bare tokens NaN/Infinity)"
        )
        click.secho(f"note: {note}", fg="yellow", err=True)
        meta["notes"] = [f"{note}."]
    written = write_comparison_report(compared, output, meta=meta)
    click.echo(f"{len(compared)} runs → {written['markdown']}, {written['html']}")


@cli.command(epilog=EXIT_CODES)
@_common_options
@click.argument("pipeline", metavar="PIPELINE_OR_MODEL", type=click.Path(path_type=Path))
@click.option("--data", "data_source", help="With a MODEL: data.eval (an image folder, or python:pkg.mod:dataset; labels -1: agreement).")
@click.option("--train", "train_source", help="With a MODEL: data.train, for fine-tuning after pruning.")
@click.option("--input-shape", "-s", help="With a MODEL: its input batch shape (1,3,224,224).")
@click.option("--weights", help="With a MODEL: none, a torchvision weights name (DEFAULT) or a checkpoint path.")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1), help="Top-1 a chosen model may lose (0.01: one point; default 0.01).")
@click.option("--target", type=click.Choice(["latency", "macs", "size"]), help="What to minimise (default latency).")
@click.option("--runtime", type=click.Choice(["onnxruntime", "torch"]), help="Where candidates run (default onnxruntime).")
@click.option("--budget-minutes", type=click.FloatRange(min=0, min_open=True), help="Time budget of the search (default 10).")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Where candidate stages run (default local).")
@click.option("--workers", "-j", type=click.IntRange(min=1), help="Candidate jobs at once (default 1).")
@click.option("--no-cache", is_flag=True, default=None, help="Compute every stage again; keep nothing for later searches.")
@click.option("--cache-size-mb", type=click.IntRange(min=1), help="Size limit of the stage cache (default 2048).")
@click.option(
    "--out", "--output", "-o", "out", type=click.Path(path_type=Path), help="Search folder (default: the pipeline's output + -optimize)."
)
def optimize(
    pipeline: Path,
    data_source: str | None,
    train_source: str | None,
    input_shape: str | None,
    weights: str | None,
    no_cache: bool | None,
    out: Path | None,
    **given: Any,
) -> None:
    """Find the fastest chain of passes for a model within an accuracy budget: PIPELINE's model and
    data, or a MODEL (e.g. torchvision:resnet50) with --data.

    Candidate chains (fuse, prune to MAC targets, finetune, export, int8) are built from the
    installed passes, searched by successive halving within the time budget, timed side by side
    with the eager model, and reported with their Pareto front; the chosen one is saved as
    chosen.yaml (optkit run chosen.yaml reproduces it). Settings may also come from the file's
    optimize: section; options given here win.
    """
    from optkit.config.pipeline import load_pipeline
    from optkit.optimize.report import write_optimize_report
    from optkit.optimize.search import optimize as search
    from optkit.optimize.settings import merged_settings
    from optkit.sweep.executors import make_executor

    host = session().host
    model_flags = {"--data": data_source, "--train": train_source, "--input-shape": input_shape, "--weights": weights}
    if not pipeline.is_file():
        import yaml

        from optkit.optimize.settings import model_pipeline
        from optkit.run.info import parse_input_shape

        shape = parse_input_shape(input_shape) if input_shape is not None else None
        model = str(pipeline)
        document = model_pipeline(model, data_source, train=train_source, input_shape=shape, weights=weights)
        out = Path(out or f"{document['output']}-optimize")
        out.mkdir(parents=True, exist_ok=True)
        pipeline = out / "pipeline.yaml"  # the search's model and data, as a file that optkit run and optimize take
        pipeline.write_text(f"# optkit optimize {model}: the model and data it searched from\n" + yaml.safe_dump(document, sort_keys=False))
    elif any(value is not None for value in model_flags.values()):
        named = ", ".join(flag for flag, value in model_flags.items() if value is not None)
        raise click.UsageError(f"{named}: only with a MODEL; {pipeline} is a pipeline file, whose model: and data: sections say that")
    spec = load_pipeline(pipeline, host.get_pass, host.get_source, producers=host.passes_producing, get_dataset=host.get_dataset)
    given["cache"] = False if no_cache else None
    settings = merged_settings(spec.spec.optimize, given)
    folder = Path(out or settings.output or f"{spec.output_dir}-optimize")

    def rung(name: str, count: int) -> None:
        click.echo(f"optimize: {name}: {count} candidate{'s' if count != 1 else ''}", err=True)

    result = search(spec, settings, make_executor(settings.executor, settings.workers), folder, host=host, on_rung=rung)
    written = write_optimize_report(result)
    chosen = result.chosen
    if chosen is not None:
        speedup = (chosen.speedup or {}).get("value")
        click.echo(
            f"chosen: {chosen.name} ({result.baseline.judged_by} {chosen.top1:.2%}, {speedup:.2f}× the eager model) → {folder}/chosen.yaml"
        )
    else:
        click.echo("no candidate within the accuracy budget: the eager model stays")
    click.echo(f"stages reused: {result.stages_reused}, computed: {result.stages_computed} · report: {written['markdown']}")


@cli.command()
@_common_options
@click.argument("sweep_file", metavar="SWEEP", type=click.Path(path_type=Path))
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Where jobs run (overrides the file; default local).")
@click.option("--workers", "-j", type=click.IntRange(min=1), help="Jobs at once (local), CPUs of a local Ray (overrides the file).")
@click.option("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a Ray started here).")
@click.option("--device", help="Device of every job (overrides the file).")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Sweep folder (overrides the file).")
def sweep(
    sweep_file: Path, executor: str | None, workers: int | None, ray_address: str | None, device: str | None, output: Path | None
) -> None:
    """Run every (model × pipeline) job of SWEEP and gather them into one report.

    A failing job is reported and the others go on; the exit code is 1 when any job failed.
    """
    from optkit.config.sweep import load_sweep
    from optkit.sweep.driver import run_sweep
    from optkit.sweep.executors import make_executor

    spec = load_sweep(sweep_file)
    updates = {k: v for k, v in {"executor": executor, "workers": workers, "device": device}.items() if v is not None}
    spec = spec.model_copy(update=updates)
    runner = make_executor(spec.executor, spec.workers, ray_address)

    def progress(outcome: Any, done: int, total: int) -> None:
        color = "green" if outcome.status == "ok" else "red"
        click.echo(
            f"[{done}/{total}] {outcome.job.name}: " + click.style(outcome.status, fg=color) + f" ({outcome.seconds:.1f} s)", err=True
        )
        if outcome.error:
            click.echo("  " + outcome.error.splitlines()[-1], err=True)

    given = {"--executor": executor, "--workers": workers, "--ray-address": ray_address, "--device": device, "--output": output}
    command = " ".join(["optkit sweep", str(sweep_file), *(f"{flag} {value}" for flag, value in given.items() if value is not None)])
    result = run_sweep(
        spec, runner, Path(output or spec.output), on_done=progress, title=f"optkit sweep: {sweep_file.name}", command=command
    )
    click.echo(
        f"{len(result.outcomes) - len(result.failed)}/{len(result.outcomes)} jobs ok → "
        f"{result.output}/report.md, {result.output}/report.html"
    )
    sys.exit(0 if result.status == "ok" else 1)


@cli.command()
@_common_options
@click.argument("model")
@click.option(
    "--input-shape",
    "-s",
    help="Input batch shape: 1,3,224,224 (C,H,W gets batch 1). Default: the source's example inputs, else 1,3,224,224.",
)
@click.option(
    "--inputs",
    "inputs_text",
    help="Several or non-float inputs, as model.inputs in a pipeline file: "
    "'{input_ids: {shape: [1, 128], dtype: int64, range: [0, 30522]}, attention_mask: {shape: [1, 128], dtype: int64, range: [1, 2]}}'.",
)
@click.option("--weights", help="none, a torchvision weights name (DEFAULT) or a checkpoint path.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N | N")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed calls before timing.")
@click.option("--iters", type=click.IntRange(min=1), default=50, show_default=True, help="Timed calls.")
@click.option("--no-latency", is_flag=True, help="Skip timing (params, MACs and size only).")
@click.option("--threads", type=click.IntRange(min=1), help="torch intra-op threads (default: torch's).")
@click.option("--cudnn-benchmark", is_flag=True, help="Let cuDNN autotune convolutions before timing.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow full unpickling of file: sources and weights; only for files you trust.")
@click.option("--verbose", "-v", is_flag=True, help="Add the per-parameter table (YOLOv5 model_info) and MACs per layer.")
@click.option(
    "--data",
    "data_source",
    help="Evaluate top-1/top-5 accuracy on this data: an image folder (one sub-folder per class) or a source such as python:pkg.mod:dataset.",
)
@click.option(
    "--transform",
    help="How images become inputs, as in data.transform: e.g. '{resize: 256, center_crop: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}'.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate on the first N samples of --data only.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(
    model: str,
    input_shape: str | None,
    inputs_text: str | None,
    weights: str | None,
    device: str,
    warmup: int,
    iters: int,
    no_latency: bool,
    threads: int | None,
    cudnn_benchmark: bool,
    trust_checkpoint: bool,
    verbose: bool,
    data_source: str | None,
    transform: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Measure MODEL (e.g. torchvision:resnet50) without a pipeline: params, MACs/GFLOPs, size, latency,
    and accuracy with --data."""
    from optkit.cli.streams import stdout_to_stderr
    from optkit.measure.latency import configure_timing
    from optkit.reporting.console import render_info
    from optkit.run.info import data_spec, inspect_model, parse_input_shape

    shape = parse_input_shape(input_shape) if input_shape is not None else None
    inputs = _yaml_value(inputs_text, "--inputs", (dict, list), "'{ids: {shape: [1, 16], dtype: int64, range: [0, 100]}}'")
    if shape is not None and inputs is not None:
        raise click.UsageError("give --input-shape (one float tensor) or --inputs, not both")
    if transform is not None and data_source is None:
        raise click.UsageError("--transform needs --data")
    data = data_spec(data_source, _yaml_mapping(transform, "--transform"), limit) if data_source else None
    with configure_timing(threads, cudnn_benchmark), stdout_to_stderr() if as_json else contextlib.nullcontext():
        result = inspect_model(
            model,
            shape,
            inputs=inputs,
            host=session().host,
            weights=weights,
            device=device,
            warmup=warmup,
            iters=iters,
            latency=not no_latency,
            verbose=verbose,
            trust_checkpoint=trust_checkpoint,
            data=data,
        )
    if as_json:
        _print_json(result)
        return
    from rich.console import Console

    render_info(result, Console())
