"""The runner: load the model, measure a baseline, then apply and measure each stage.

Everything a run produces goes under its folder: ``report.json`` and ``report.md`` (rewritten
atomically after every stage, so a failure or Ctrl-C leaves a partial report), one folder per
stage for its artifacts, and ``model.pt`` (the final module) on success.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from optkit.artifacts import Artifact
from optkit.atomic import atomic_write_text
from optkit.device import select_device
from optkit.environment import environment, optkit_version
from optkit.errors import OptkitError, StageError
from optkit.measure import Measurement, compare_outputs, drift_exceeds, measure
from optkit.measure.latency import configure_timing
from optkit.passes import PassContext
from optkit.results import RunInfo, RunReport, StageResult
from optkit.run_dirs import prepare_run_dir
from optkit.sources import load_model

if TYPE_CHECKING:
    from optkit.host import Host
    from optkit.pipeline import Pipeline, Stage

__all__ = ["run_pipeline", "prepare_run_dir", "example_input"]

log = logging.getLogger(__name__)


def example_input(shape: list[int], seed: int, device: torch.device) -> torch.Tensor:
    """The one seeded batch every stage is measured on (the same on every machine)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(device)


def run_pipeline(
    pipeline: Pipeline,
    host: Host,
    *,
    device: str | int | None = None,
    output: Path | None = None,
    overwrite: bool = False,
) -> tuple[RunReport, Path]:
    """Run ``pipeline``; returns the report (status ``ok``, ``failed`` or ``interrupted``) and its folder.

    Raises:
        PipelineError: the device or the model cannot be had; nothing was run.
    """
    settings = pipeline.measure
    torch_device = select_device(device if device is not None else pipeline.spec.device)
    configure_timing(settings.threads, settings.cudnn_benchmark, settings.flush_denormal)
    model, load_details = load_model(pipeline.model, host, pipeline.base_dir)
    model = model.to(torch_device)
    inputs = example_input(pipeline.model.input_shape, pipeline.spec.seed, torch_device)

    run_dir = prepare_run_dir(output if output is not None else pipeline.output_dir, overwrite)
    stages = [StageResult("baseline", None, 0, details=load_details)]
    stages += [StageResult(s.pass_name, s.pass_name, s.index) for s in pipeline.stages]
    report = RunReport(environment(torch_device), pipeline.summary(), stages, optkit_version=optkit_version())
    info = RunInfo(pipeline, run_dir, str(torch_device), [s.name for s in stages])
    report.write(run_dir)

    runner = _StageRunner(report, info, host, inputs, torch_device, run_dir)
    baseline = runner.run(stages[0], lambda ctx: model, preserves_outputs=False)
    if baseline is not None:
        for stage in pipeline.stages:
            result = runner.run(stages[stage.index], _applier(stage, model), stage.pass_cls.preserves_outputs)
            if result is None:
                break
            if isinstance(result, nn.Module):
                model = result
    if report.status == "running":
        report.status = "ok"
        if pipeline.spec.save_model:
            _save_model(model, run_dir / "model.pt")
    report.write(run_dir)
    return report, run_dir


def _applier(stage: Stage, model: nn.Module) -> Any:
    def apply(ctx: PassContext) -> nn.Module | Artifact:
        model.eval()
        result = stage.make_pass().apply(model, ctx)
        if not isinstance(result, (nn.Module, Artifact)):
            raise StageError(f"pass {stage.pass_name!r} returned {type(result).__name__}, not a module or an artifact")
        return result

    return apply


class _StageRunner:
    """Runs one stage at a time: apply, measure, check drift, record, notify, write the report."""

    def __init__(self, report: RunReport, info: RunInfo, host: Host, inputs: torch.Tensor, device: torch.device, run_dir: Path):
        self.report, self.info, self.host = report, info, host
        self.inputs, self.device, self.run_dir = inputs, device, run_dir
        self.settings = info.pipeline.measure
        self.baseline: Measurement | None = None
        self.previous: Measurement | None = None

    def run(self, result: StageResult, apply: Any, preserves_outputs: bool) -> nn.Module | Artifact | None:
        """Run one stage; returns its product, or ``None`` when the run must stop."""
        self.host.stage_started(result.name, result.index, self.info)
        stage_dir = self.run_dir / "stages" / f"{result.index:02d}-{result.name}"
        stage_dir.mkdir(parents=True, exist_ok=True)
        ctx = PassContext(
            device=self.device,
            example_input=self.inputs,
            output_dir=stage_dir,
            logger=logging.getLogger(f"optkit.stage.{result.name}"),
            stage_index=result.index,
        )
        ctx.details.update(result.details)
        product = None
        start = time.perf_counter()
        try:
            product = apply(ctx)
            result.duration_s = time.perf_counter() - start
            measurement = measure(product, self.inputs, self.settings, self.device)
            result.measure_s = measurement.seconds
            result.metrics = measurement.metrics
            self._add_drift(result, measurement, preserves_outputs)
            result.status = "ok"
        except KeyboardInterrupt:
            result.status, result.error = "interrupted", "interrupted (Ctrl-C)"
            self.report.status = "interrupted"
        except OptkitError as exc:
            self._fail(result, str(exc))
        # A pass is plugin code and may fail in any way; the stage is marked failed with the
        # error and its traceback, and the run stops with everything so far kept on disk.
        except Exception as exc:  # noqa: BLE001
            trace = stage_dir / "traceback.txt"
            atomic_write_text(trace, traceback.format_exc())
            ctx.artifacts.append(trace)
            self._fail(result, f"{type(exc).__name__}: {exc}")
        finally:
            if product is None:  # the pass itself failed: its time until then
                result.duration_s = time.perf_counter() - start
            result.details = ctx.details
            result.artifacts = [str(Path(p).relative_to(self.run_dir)) for p in ctx.artifacts]
            for folder in (stage_dir, stage_dir.parent):  # no empty stage folders left behind
                if not any(folder.iterdir()):
                    folder.rmdir()
            self.report.write(self.run_dir)
            self.host.stage_finished(result, self.info)
        return product if result.status == "ok" else None

    def _fail(self, result: StageResult, message: str) -> None:
        where = "baseline (model loading and measurement)" if result.index == 0 else f"stage {result.index} ({result.name})"
        result.status, result.error = "failed", f"{where} failed: {message}"
        self.report.status = "failed"
        self.report.error = result.error

    def _add_drift(self, result: StageResult, measurement: Measurement, preserves_outputs: bool) -> None:
        if self.baseline is None:
            # The baseline is the reference: its drift is the identity (0, 1, 1), recorded so that
            # every ok stage of report.json carries the same metric fields.
            self.baseline = self.previous = measurement
            result.metrics["drift"] = compare_outputs(measurement.outputs, measurement.outputs)
            return
        drift = compare_outputs(measurement.outputs, self.baseline.outputs)
        drift["previous"] = compare_outputs(measurement.outputs, self.previous.outputs)
        result.metrics["drift"] = drift
        self.previous = measurement
        if preserves_outputs:
            tolerance = self.settings.drift_tolerance
            problem = drift_exceeds(drift["previous"], tolerance.atol, tolerance.rtol)
            if problem:
                raise StageError(f"{result.name} must preserve outputs, but {problem}; raise measure.drift_tolerance to accept it")


def _save_model(model: nn.Module, path: Path) -> None:
    """Save the whole module (architecture included: pruning changes it). Reload with ``file:`` and trust."""
    tmp = path.with_suffix(".pt.tmp")
    torch.save(model, tmp)
    tmp.replace(path)
