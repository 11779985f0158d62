"""The runner: load the model, measure a baseline, then apply and measure each stage.

Everything a run produces goes under its folder: ``report.json`` and ``report.md`` (rewritten
atomically after every stage, so a failure or Ctrl-C leaves a partial report), one folder per
stage for its artifacts, and ``model.pt`` (the final module) once every stage succeeded.
Latency is timed as :mod:`optkit.run.timing` plans it: each stage right after it is applied, or
all of them side by side after the last one (then the report is written again with latency).
"""

from __future__ import annotations

import copy
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optkit.artifacts import Artifact
from optkit.config.pipeline import Pipeline, load_pipeline
from optkit.errors import OptkitError, PipelineError, StageError, plain_text
from optkit.files import atomic_write_text, overwrite_in_place
from optkit.host.facade import Host
from optkit.inputs import ExampleInputs, InputDef
from optkit.measure.drift import channel_groups_for, compare_outputs, drift_exceeds, tolerance_failure
from optkit.measure.latency import configure_timing
from optkit.measure.outputs import flatten_outputs, select_outputs
from optkit.measure.sensitivity import INPUT_STEP, output_sensitivity, within_sensitivity
from optkit.measure.size import tensor_bytes
from optkit.measure.stage import Measurement, measure
from optkit.measure.uninformative import second_input, uninformative_outputs, uninformative_warning
from optkit.models.layers import eval_mode
from optkit.passes import Pass, PassContext, Tolerance
from optkit.reporting.writing import write_run_report
from optkit.results import (
    Drift,
    DriftTolerance,
    RunInfo,
    RunReport,
    RunStatus,
    Similarity,
    StageResult,
    StageStatus,
    TimingStatus,
    json_problem,
    optkit_version,
)
from optkit.run.baseline_guard import BaselineGuard
from optkit.run.data import RunData, prepare_data
from optkit.run.device import select_device
from optkit.run.environment import environment
from optkit.run.library_output import captured_library_output
from optkit.run.run_dirs import claim_run_dir
from optkit.run.seeding import seeded_construction
from optkit.run.signals import handling_signals, interruption, restore_handlers
from optkit.run.timing import StageTiming, plan_timing

__all__ = ["run_pipeline", "example_input", "seeded_inputs"]

log = logging.getLogger(__name__)


def example_input(shape: list[int], seed: int, device: torch.device) -> torch.Tensor:
    """The one seeded batch every stage is measured on (the same on every machine).

    Raises:
        PipelineError: the batch cannot be allocated (too large for this machine).
    """
    return seeded_inputs([InputDef("input", tuple(shape))], seed, device).first


def seeded_inputs(defs: list[InputDef], seed: int, device: torch.device) -> ExampleInputs:
    """The seeded inputs every stage is measured on (the same on every machine).

    Raises:
        PipelineError: the inputs cannot be allocated (too large for this machine).
    """
    try:
        return ExampleInputs.sample(defs, seed, device)
    except RuntimeError as exc:  # torch.OutOfMemoryError is one; the CPU allocator raises RuntimeError
        option = f"model.input_shape {list(defs[0].shape)}" if len(defs) == 1 else "model.inputs"
        raise PipelineError(f"{option}: cannot allocate the input batch on {device}: {plain_text(str(exc)).splitlines()[0]}") from exc


def run_pipeline(
    pipeline: Pipeline | str | Path,
    host: Host | None = None,
    *,
    device: str | int | None = None,
    output: Path | None = None,
    overwrite: bool = False,
) -> tuple[RunReport, Path]:
    """Run a pipeline, as ``optkit run`` does; returns the report (status ``ok``, ``failed`` or
    ``interrupted``) and its folder.

    The timing settings of ``measure:`` (threads, cuDNN autotuning, denormal flushing) hold
    for the run only: they are restored when it ends.

    Args:
        pipeline: a pipeline file, or one already loaded.
        host: the plugins to run with; by default the installed ones (a fresh ``Host()``).
        device: overrides the file's ``device:`` (``cpu``, ``cuda:1``, ...).
        output: overrides the file's ``output:`` folder.
        overwrite: replace an existing run folder.

    Example:
        >>> report, run_dir = optkit.run_pipeline("examples/resnet18.yaml", output=Path("runs/r18"))  # doctest: +SKIP
        >>> report.status  # doctest: +SKIP
        'ok'

    Raises:
        PipelineError: the file is invalid, or the device or the model cannot be had, or the run
            folder cannot be written or has too little room; nothing was run.
    """
    host = host if host is not None else Host()
    if not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline, host.get_pass, host.get_source, producers=host.passes_producing)
    settings = pipeline.measure
    with configure_timing(settings.threads, settings.cudnn_benchmark, settings.flush_denormal), handling_signals():
        return _run(pipeline, host, device, output, overwrite)


def _run(pipeline: Pipeline, host: Host, device: str | int | None, output: Path | None, overwrite: bool) -> tuple[RunReport, Path]:
    torch_device = select_device(device if device is not None else pipeline.spec.device)
    with seeded_construction(pipeline.spec.seed):  # report.json's pipeline.seed records it
        model, load_details, source_inputs = host.load_model(pipeline.model, pipeline.base_dir, with_inputs=True)
    model = model.to(torch_device)
    if source_inputs is not None:
        inputs = source_inputs.to(torch_device)
    else:
        inputs = seeded_inputs(pipeline.model.input_defs(), pipeline.spec.seed, torch_device)
    data = prepare_data(
        pipeline.data,
        host,
        model,
        inputs,
        torch_device,
        base_dir=pipeline.data_dir,
        seed=pipeline.spec.seed,
        accuracy=pipeline.evaluates_accuracy,
        max_accuracy_drop=pipeline.measure.max_accuracy_drop,
    )
    if data.details:
        load_details["data"] = data.details

    # model.pt and an export (ONNX) each take about the model's size.
    need = 2 * tensor_bytes(model) if pipeline.stages or pipeline.spec.save_model else 0
    run_dir, lock = claim_run_dir(output if output is not None else pipeline.output_dir, overwrite, need_bytes=need)
    try:
        return _run_stages(pipeline, host, model, inputs, data, torch_device, run_dir, lock.record(), load_details)
    finally:
        lock.release()  # however the run ends: the folder is free for the next one


def _run_stages(
    pipeline: Pipeline,
    host: Host,
    model: nn.Module,
    inputs: ExampleInputs,
    data: RunData,
    torch_device: torch.device,
    run_dir: Path,
    lock: dict[str, Any],
    load_details: dict[str, Any],
) -> tuple[RunReport, Path]:
    stages = [StageResult("baseline", None, 0, details=load_details)]
    stages += [StageResult(s.pass_name, s.pass_name, s.index) for s in pipeline.stages]
    plan = plan_timing(pipeline.measure, model, len(pipeline.stages), torch_device)
    timing = StageTiming(plan, pipeline.measure, inputs, torch_device, len(pipeline.stages))
    report = RunReport(
        environment(torch_device), pipeline.summary(), stages, optkit_version=optkit_version(), timing=timing.summary, lock=lock
    )
    # Observers read `compare` to announce the side-by-side timing: there is none without latency.
    compare = "interleaved" if timing.interleaved else "sequential"
    info = RunInfo(pipeline, run_dir, str(torch_device), [s.name for s in stages], compare=compare)
    runner = _StageRunner(report, info, host, inputs, torch_device, run_dir, data, timing)
    if not runner.write_report():
        return report, run_dir

    try:
        return _run_passes(pipeline, model, runner, stages, timing)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM between stages (a hook, a report write): say so on disk
        report.status, report.error = RunStatus.interrupted, report.error or interruption(exc)
        if runner.current is not None and runner.current.status not in ("ok", "failed"):
            runner.current.status, runner.current.error = StageStatus.interrupted, interruption(exc)
        _mark_timing_interrupted(timing)
        runner.write_report()
        return report, run_dir


def _run_passes(
    pipeline: Pipeline, model: nn.Module, runner: _StageRunner, stages: list[StageResult], timing: StageTiming
) -> tuple[RunReport, Path]:
    report, run_dir = runner.report, runner.run_dir
    passes = [stage.make_pass() for stage in pipeline.stages]
    timing.start()
    baseline = runner.run(stages[0], lambda ctx: model, tolerance=None)
    if baseline is not None:
        last_reader = max((i for i, p in enumerate(passes) if p.needs_baseline_model), default=-1)
        runner.baseline_model = _frozen_copy(model, timing.kept_module(0)) if last_reader >= 0 else None
        artifact: Artifact | None = None  # ctx.artifact: the latest stage's artifact, until a module makes it stale
        for i, (stage, pass_) in enumerate(zip(pipeline.stages, passes, strict=True)):
            tolerance = _tolerance(pass_, pipeline.measure.drift_tolerance)
            result = runner.run(stages[stage.index], _applier(stage.pass_name, pass_, model), tolerance, artifact=artifact)
            if i == last_reader:
                runner.baseline_model = None  # no later stage reads it: its memory goes back
            if result is None:
                break
            if isinstance(result, nn.Module):
                model, artifact = result, None
            else:
                artifact = result
    if report.status == "running" and pipeline.spec.save_model:
        _save_model(model, run_dir / "model.pt", report)  # before the side-by-side timing: Ctrl-C there keeps it
    if report.status != "interrupted":
        _time_side_by_side(timing, report)
    else:
        _mark_timing_interrupted(timing)
    if report.status == "running":
        report.status = RunStatus.ok
    runner.write_report()
    return report, run_dir


def _mark_timing_interrupted(timing: StageTiming) -> None:
    """A side-by-side timing that will never run says so (not ``pending``)."""
    if timing.summary.status == TimingStatus.pending:
        timing.summary.status = TimingStatus.interrupted


def _time_side_by_side(timing: StageTiming, report: RunReport) -> None:
    """Time the stages measured ``ok`` side by side (interleaved runs), even after a failed stage.

    A failure or Ctrl-C here leaves every stage applied and measured but without latency; the
    report says so (``timing.status`` and ``timing.error`` too) and the run ends ``failed`` or
    ``interrupted``, keeping the error of a stage that failed before.
    """
    if not timing.interleaved:
        return
    try:
        timing.time_side_by_side(report.stages)
    except KeyboardInterrupt as exc:
        report.status = RunStatus.interrupted
        report.error = report.error or f"{interruption(exc)} while timing the stages side by side: they have no latency"
    except StageError as exc:
        if report.status == "running":
            report.status, report.error = RunStatus.failed, str(exc)


def _frozen_copy(model: nn.Module, timing_copy: nn.Module | None = None) -> nn.Module | None:
    """The baseline kept for passes that read it (``ctx.baseline_model``): a copy, since passes may
    change their model in place; eval mode, no gradients. It costs one model's memory on the device,
    none when the side-by-side timing already holds a copy of the baseline (``timing_copy``, shared:
    both only read it).

    Returns ``None`` (with a warning) for a module that cannot be copied: the passes that need it say so.
    """
    if timing_copy is not None:
        timing_copy.eval().requires_grad_(False)
        log.info("passes that read the baseline model share the side-by-side timing's copy of it")
        return timing_copy
    try:
        kept = copy.deepcopy(model).eval()
    # deepcopy runs the module's own __deepcopy__/__reduce__ (plugin or user code), which fails in any way.
    except Exception as exc:  # noqa: BLE001
        log.warning("the baseline model cannot be copied for the passes that read it: %s: %s", type(exc).__name__, exc)
        return None
    for parameter in kept.parameters():
        parameter.requires_grad_(False)
    log.info("keeping a copy of the baseline model for passes that read it (%.1f MiB)", tensor_bytes(kept) / 2**20)
    return kept


def _tolerance(pass_: Pass, pipeline_tolerance: Tolerance) -> tuple[Tolerance, str] | None:
    """What the stage's outputs are held to, and the option that sets it: the pass's own
    tolerance, else the pipeline's; ``None`` for a pass that changes outputs on purpose."""
    if not pass_.preserves_outputs:
        return None
    own = pass_.tolerance()
    if own is not None:
        return own, f"the tolerance options of {pass_.name}"
    return pipeline_tolerance, "measure.drift_tolerance"


def _applier(pass_name: str, pass_: Pass, model: nn.Module) -> Any:
    def apply(ctx: PassContext) -> nn.Module | Artifact:
        if pass_.consumes is not None:
            ctx.require_artifact(pass_.consumes)
        model.eval()
        result = pass_.apply(model, ctx)
        if not isinstance(result, (nn.Module, Artifact)):
            raise StageError(f"pass {pass_name!r} returned {type(result).__name__}, not a module or an artifact")
        if pass_.produces is not None and not isinstance(result, pass_.produces):
            raise StageError(
                f"pass {pass_name!r} declares that it produces {pass_.produces.__name__}, but returned {type(result).__name__}"
            )
        return result

    return apply


class _StageRunner:
    """Runs one stage at a time: apply, measure, check drift, record, notify, write the report."""

    def __init__(
        self,
        report: RunReport,
        info: RunInfo,
        host: Host,
        inputs: ExampleInputs,
        device: torch.device,
        run_dir: Path,
        data: RunData,
        timing: StageTiming,
    ):
        self.report, self.info, self.host = report, info, host
        self.inputs, self.device, self.run_dir, self.data = inputs, device, run_dir, data
        self.settings = info.pipeline.measure
        self.module_rules = host.rule_table()
        self.importances = host.importance_table()
        self.timing = timing
        self.baseline: Measurement | None = None
        self.previous: Measurement | None = None
        #: Outputs whose drift says nothing (empty, or the same for another input): name -> why.
        self.uninformative: dict[str, str] = {}
        #: How much each baseline output moves under a rounding-level change of the input: name -> max |Δ|.
        self.sensitivity: dict[str, float] = {}
        #: ``ctx.baseline_model`` of the next stages (kept only while a pass that reads it is to come).
        self.baseline_model: nn.Module | None = None
        #: The stage under way (recorded ``interrupted`` when a signal ends the run outside its own handling).
        self.current: StageResult | None = None

    def run(
        self, result: StageResult, apply: Any, tolerance: tuple[Tolerance, str] | None, artifact: Artifact | None = None
    ) -> nn.Module | Artifact | None:
        """Run one stage (``artifact``: the pass's ``ctx.artifact``); returns its product, or ``None`` when the run must stop."""
        self.current = result
        self.host.stage_started(result.name, result.index, self.info)
        stage_dir = self.run_dir / "stages" / f"{result.index:02d}-{result.name}"
        ctx = PassContext(
            device=self.device,
            example_input=self.inputs.first,
            example_inputs=self.inputs,
            output_dir=stage_dir,
            logger=logging.getLogger(f"optkit.stage.{result.name}"),
            stage_index=result.index,
            data=self.data.loaders,
            baseline_model=self.baseline_model,
            on_progress=lambda progress: self.host.stage_progress(result.name, result.index, progress, self.info),
            artifact=artifact,
            module_rules=self.module_rules,
            importances=self.importances,
        )
        ctx.details.update(result.details)
        product = None
        library_output: list[str] = []
        start = time.perf_counter()
        try:
            stage_dir.mkdir(parents=True, exist_ok=True)
            guard = BaselineGuard(self.baseline_model)
            with captured_library_output(library_output):
                product = apply(ctx)
                self._check_baseline_unchanged(guard, result)
                if isinstance(product, Artifact):  # made however the pass liked: it must still be in the stage folder
                    self._check_inside(product.path, stage_dir)
                    if not any(Path(listed).resolve() == Path(product.path).resolve() for listed in ctx.artifacts):
                        ctx.artifacts.append(Path(product.path))
                result.duration_s = time.perf_counter() - start
                measurement = measure(
                    product, self.inputs, self.settings, self.device, self.module_rules, time_latency=not self.timing.interleaved
                )
                result.measure_s = measurement.seconds
                result.metrics = measurement.metrics
                self._add_drift(result, measurement, product)
                self._add_accuracy(result, product)
            self._hold_to(result, tolerance, ctx.details)
            problem = json_problem(ctx.details, "details")
            if problem is not None:
                raise StageError(f"{problem}: report.json holds JSON values only")
            result.status = StageStatus.ok
            self.timing.keep(result, product)
            self.timing.add_speedups(self.report.stages)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (optkit.run.signals)
            result.status, result.error = StageStatus.interrupted, interruption(exc)
            self.report.status = RunStatus.interrupted
        except OptkitError as exc:
            self._fail(result, str(exc), ctx)
        # A pass is plugin code and may fail in any way; the stage is marked failed with the
        # error and its traceback, and the run stops with everything so far kept on disk.
        except Exception as exc:  # noqa: BLE001
            self._fail(result, f"{type(exc).__name__}: {exc}", ctx)
        finally:
            restore_handlers()  # the pass may have replaced or ignored SIGINT/SIGTERM
            if product is None:  # the pass itself failed: its time until then
                result.duration_s = time.perf_counter() - start
            if library_output:  # what libraries warned, kept here instead of printed over the progress display
                ctx.details["library_warnings"] = library_output
            # A value that is not JSON failed the stage above; the report keeps the keys that are.
            result.details = {key: value for key, value in ctx.details.items() if json_problem(value, key) is None}
            result.artifacts = self._artifacts(result, ctx)
            _remove_if_empty(stage_dir, stage_dir.parent)
            written = self.write_report()
            self.host.stage_finished(result, self.info)
        self.current = None
        return product if result.status == "ok" and written else None

    def _check_baseline_unchanged(self, guard: BaselineGuard, result: StageResult) -> None:
        """Fail the stage whose pass changed ``ctx.baseline_model``; the baseline's copy is then out of the side-by-side timing."""
        changed = guard.changes()
        if changed:
            self.timing.forget(0)  # shared with ctx.baseline_model: no speed-up over a corrupted baseline
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            raise StageError(
                f"pass {result.pass_name!r} changed ctx.baseline_model ({changed[0]}{more}); passes read it, never change it: "
                "later stages read it too, and the side-by-side timing times it"
            )

    def write_report(self) -> bool:
        """Write report.json and report.md; ``False`` (and the run failed) when the folder no longer takes them.

        A folder that turned read-only still lets report.json be rewritten in place, so the
        report on disk says why the run stopped.
        """
        self._drop_missing_artifacts()
        try:
            write_run_report(self.report, self.run_dir)
            return True
        except OSError as exc:
            self.report.status = RunStatus.failed
            self.report.error = f"cannot write into the run folder {self.run_dir} ({exc.strerror or exc}); the run stopped there"
            try:
                overwrite_in_place(self.run_dir / "report.json", self.report.to_json().encode("utf-8"))
            except OSError:
                self.report.error += "; report.json on disk is from an earlier stage"
            return False

    def _check_inside(self, path: str | Path, stage_dir: Path) -> None:
        """Raise StageError for an artifact outside the stage folder (another stage's, the run folder's, elsewhere)."""
        if _relative_to(path, stage_dir.resolve()) is None:
            raise StageError(self._outside_message(path, stage_dir))

    def _outside_message(self, path: str | Path, stage_dir: Path) -> str:
        shown = _relative_to(stage_dir, self.run_dir.resolve()) or str(stage_dir)
        return f"artifact {path} is outside the stage folder {shown}; write artifacts with ctx.artifact_path(name)"

    def _artifacts(self, result: StageResult, ctx: PassContext) -> list[str]:
        """The stage's artifacts relative to the run folder; one outside the stage folder fails the stage."""
        root, stage_dir = self.run_dir.resolve(), ctx.output_dir.resolve()
        outside = [str(path) for path in ctx.artifacts if _relative_to(path, stage_dir) is None]
        if outside and result.status == "ok":
            self._fail(result, self._outside_message(outside[0], ctx.output_dir), ctx)
        return [str(Path(path).resolve().relative_to(root)) for path in ctx.artifacts if _relative_to(path, stage_dir) is not None]

    def _drop_missing_artifacts(self) -> None:
        """The report lists only artifacts that exist (a later stage may delete a file); details say which went."""
        for stage in self.report.stages:
            missing = [a for a in stage.artifacts if not (self.run_dir / a).exists()]
            if missing:
                stage.artifacts = [a for a in stage.artifacts if a not in missing]
                stage.details.setdefault("artifacts_removed", []).extend(missing)
                log.warning("stage %s: artifacts no longer on disk: %s", stage.name, ", ".join(missing))

    def _fail(self, result: StageResult, message: str, ctx: PassContext) -> None:
        where = "baseline (model loading and measurement)" if result.index == 0 else f"stage {result.index} ({result.name})"
        result.status, result.error = StageStatus.failed, plain_text(f"{where} failed: {message}")
        self.report.status = RunStatus.failed
        self.report.error = result.error
        trace = ctx.output_dir / "traceback.txt"
        handling = sys.exc_info()[1] is not None  # else a rule of the runner failed the stage
        try:
            atomic_write_text(trace, traceback.format_exc() if handling else result.error + "\n")
            ctx.artifacts.append(trace)
        except OSError:  # the folder is not writable: the error is in the report all the same
            log.warning("could not write %s", trace)

    def _add_accuracy(self, result: StageResult, product: nn.Module | Artifact) -> None:
        """``accuracy`` and ``agreement`` on data.eval; a stage over the accuracy budget fails (its metrics kept)."""
        tracker = self.data.accuracy
        if tracker is None:
            return
        accuracy, agreement, seconds = tracker.evaluate(product)
        result.metrics.accuracy, result.metrics.agreement = accuracy, agreement
        result.measure_s += seconds
        tracker.check_budget(accuracy)

    def _add_drift(self, result: StageResult, measurement: Measurement, product: nn.Module | Artifact) -> None:
        module = product.source_model if isinstance(product, Artifact) else product
        groups = channel_groups_for(module, measurement.outputs, self.module_rules) if isinstance(module, nn.Module) else {}
        if self.baseline is None:
            # The baseline is the reference: its drift is the identity (0, 1, 1), recorded so that
            # every ok stage of report.json carries the same metric fields.
            self.baseline = self.previous = measurement
            drift = Drift(**dict(compare_outputs(measurement.outputs, measurement.outputs, groups=groups)))
            if isinstance(module, nn.Module):
                self._check_baseline(module, measurement.outputs)
                drift.sensitivity = {"input_step": INPUT_STEP, "max_abs": self.sensitivity}
            if drift.detections_warning:  # said once; every stage's figures carry it
                log.warning("drift: %s", drift.detections_warning)
            self._note_uninformative(drift)
            result.metrics.drift = drift
            return
        # An artifact that keeps only some of the model's outputs (export_onnx's `outputs:`, a YOLO
        # deployment output) is compared with those outputs of the stages before it. It changes
        # nothing in the model carried on, so the next stage is compared with the stage before it.
        selection = getattr(product, "output_selection", None)

        def reference(stage: Measurement) -> Any:
            return stage.outputs if selection is None else select_outputs(stage.outputs, selection)

        previous = self.previous if self.previous is not None else self.baseline  # both are set together
        drift = Drift(**dict(compare_outputs(measurement.outputs, reference(self.baseline), groups=groups)))
        drift.previous = compare_outputs(measurement.outputs, reference(previous), groups=groups)
        self._note_uninformative(drift)
        result.metrics.drift = drift
        if selection is None:
            self.previous = measurement

    def _check_baseline(self, model: nn.Module, outputs: Any) -> None:
        """Find the baseline's outputs that are empty or do not change with the input, and its
        sensitivity to a rounding-level change of the input (a few more forward passes)."""
        seed = self.info.pipeline.spec.seed
        with eval_mode(model), torch.inference_mode():
            self.uninformative = uninformative_outputs(outputs, second_input(self.inputs, seed + 1).call(model))
            self.sensitivity = output_sensitivity(model, self.inputs, outputs, seed + 2)
        warning = uninformative_warning(self.uninformative, len(flatten_outputs(outputs)))
        if warning:
            log.warning("%s", warning)

    def _note_uninformative(self, drift: Drift) -> None:
        """Name, in a stage's drift figures, the outputs whose comparison says nothing (and the
        images whose detections all tied, which were not compared)."""
        rows = drift.outputs or []
        found = {row.name: self.uninformative[row.name] for row in rows if row.name in self.uninformative}
        if found:
            drift.uninformative = found
        # Detections whose scores all tie were not compared (optkit.measure.detections).
        warnings = [uninformative_warning(found, len(rows)) if found else None, drift.detections_warning]
        if any(warnings):
            drift.warning = "; ".join(w for w in warnings if w)

    def _hold_to(self, result: StageResult, tolerance: tuple[Tolerance, str] | None, details: dict[str, Any]) -> None:
        """Fail a stage whose outputs break its tolerance against the stage before (see
        :func:`optkit.measure.drift.tolerance_failure`: similarity bounds on data.eval when it is evaluated, else on
        the pass's ``similarity_gate`` in ``details`` when it gives one: figures over more samples than the seeded batch)."""
        drift = result.metrics.drift
        if tolerance is None or drift is None or drift.previous is None:
            return
        limit, option = tolerance
        previous = drift.previous
        agreement = result.metrics.agreement
        similar = agreement.previous if agreement is not None else None
        # Other outputs (a new head) are not comparable on data.eval: the seeded batch is used.
        on_data = similar if similar is not None and similar.comparable is not False else None
        where = "data.eval" if on_data is not None else "seeded batch"
        gate = details.get("similarity_gate")
        if on_data is None and isinstance(gate, dict):  # the pass compared more samples than the seeded batch
            on_data, where = Similarity(top1=gate.get("top1"), cosine=gate.get("cosine")), gate["on"]
        similarity = limit.cosine is not None or limit.top1_agreement is not None
        drift.tolerance = DriftTolerance(**limit.model_dump(exclude_none=True), set_by=option, similarity_on=where if similarity else None)
        problem = tolerance_failure(previous, limit, on_data, f"on {where}")
        if problem and limit.atol is not None and limit.rtol is not None and drift_exceeds(previous, limit.atol, limit.rtol) is not None:
            own_noise = within_sensitivity(previous, self.sensitivity)
            if own_noise is not None:
                # The model moves as much under a rounding-level change of its input: not the transform's doing.
                drift.tolerance.within_model_sensitivity = own_noise
                log.warning(
                    "%s: drift max |Δ| %.3g on %s is over the tolerance but within %g× what a %g change of the input causes (%.3g): "
                    "the model amplifies rounding, and the stage is not failed for it",
                    result.name,
                    own_noise["drift_max_abs"],
                    own_noise["output"],
                    own_noise["factor"],
                    INPUT_STEP,
                    own_noise["sensitivity_max_abs"],
                )
                relaxed = limit.model_copy(update={"atol": None, "rtol": None}) if similarity else None
                problem = tolerance_failure(previous, relaxed, on_data, f"on {where}") if relaxed is not None else None
        if problem:
            # An element-wise bound is loosened by raising it, a similarity bound by lowering it.
            elementwise = limit.atol is not None and limit.rtol is not None and drift_exceeds(previous, limit.atol, limit.rtol) is not None
            fix = f"{'raise' if elementwise else 'lower'} {option} to accept it"
            detections = isinstance(gate, dict) and "detections" in gate  # data.eval holds classifier labels, not boxes
            if not elementwise and where != "data.eval" and not detections:
                fix += ", or give data.eval: similarity is then held on real samples, not on random values"
            raise StageError(f"{result.name} must preserve outputs, but {problem}; {fix}")


def _relative_to(path: str | Path, root: Path) -> str | None:
    """``path`` relative to ``root`` (resolved), or ``None`` when it is not under it."""
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return None


def _remove_if_empty(*folders: Path) -> None:
    """No empty stage folders left behind."""
    for folder in folders:
        try:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        except OSError:  # a folder that turned read-only keeps its empty stage folder
            return


def _save_model(model: nn.Module, path: Path, report: RunReport) -> None:
    """Save the whole module (architecture included: pruning changes it). Reload with ``file:`` and trust.

    A model that cannot be pickled (a lambda or a lock among its attributes) or a full disk
    fails the run with the reason; every stage stays in the report.
    """
    tmp = path.with_suffix(".pt.tmp")
    try:
        torch.save(model, tmp)
        tmp.replace(path)
    # Pickling a module runs its own code (__reduce__, __getstate__) and fails in many ways.
    except Exception as exc:  # noqa: BLE001
        tmp.unlink(missing_ok=True)
        report.status = RunStatus.failed
        report.error = plain_text(
            f"saving the final model as {path.name} failed: {type(exc).__name__}: {exc}; "
            "set save_model: false in the pipeline file to skip it"
        )
