"""Planning a sweep: every (model × pipeline) pair of a sweep file becomes a :class:`~optkit.sweep.jobs.Job`
whose complete pipeline file is written under ``<output>/jobs/``."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from optkit.config.sweep import SweepFile, SweepModel
from optkit.errors import PipelineError
from optkit.sweep.jobs import Job

__all__ = ["plan_jobs"]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "job"


def _input_shape(sweep: SweepFile, model: SweepModel) -> list[int] | None:
    """The job's ``input_shape``; ``None`` where the model gives ``inputs``, or where neither the model nor the
    sweep sets a shape and the source may bring its own example inputs (an ``hf:`` model, a ``python:`` factory)."""
    if model.inputs is not None:
        return None
    # The model's own shape only where the sweep file gives one (ModelSpec fills in a default).
    own = model.input_shape if model.inputs_given else None
    if own is None and not {"input_shape", "input_size"} & sweep.model_fields_set and not model.input_size_kwarg:
        return None
    shape = list(own or sweep.input_shape)
    if sweep.input_size is not None and own is None:
        shape[-2:] = [sweep.input_size, sweep.input_size]
    return shape


def _gpus_for(sweep: SweepFile) -> float:
    if sweep.gpus_per_job is not None:
        return sweep.gpus_per_job
    device = str(sweep.device).lower()
    return 1.0 if device.startswith("cuda") or device.isdigit() else 0.0


def plan_jobs(sweep: SweepFile, output: Path) -> list[Job]:
    """Every (model × pipeline) job of ``sweep``, with its pipeline file text, in file order.

    Args:
        sweep: the validated sweep file.
        output: the sweep folder (jobs go to ``jobs/``, runs to ``runs/``).
    """
    output = Path(output).resolve()
    jobs = []
    for model in sweep.models:
        shape = _input_shape(sweep, model)
        kwargs = dict(model.kwargs)
        if model.input_size_kwarg and shape is not None:
            kwargs[model.input_size_kwarg] = shape[-1]
        for pipeline_name, passes in sweep.pipelines.items():
            name = _safe_name(f"{model.label}--{pipeline_name}")
            run_dir = output / "runs" / name
            spec = {
                "model": model.model_section(shape, kwargs),
                "device": sweep.device,
                "seed": sweep.seed,
                "measure": sweep.measure.model_dump(mode="json", exclude_defaults=True),
                **({"data": sweep.data.model_dump(mode="json", exclude_defaults=True)} if sweep.data is not None else {}),
                "passes": passes,
                "output": str(run_dir),
                "save_model": sweep.save_model,
            }
            header = f"# optkit sweep job {name}\n"  # the file-name-safe name alone: no text of the sweep file is pasted
            jobs.append(
                Job(
                    name=name,
                    model=model.label,
                    pipeline=pipeline_name,
                    pipeline_yaml=header + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None),
                    pipeline_file=str(output / "jobs" / f"{name}.yaml"),
                    run_dir=str(run_dir),
                    device=str(sweep.device),
                    num_gpus=_gpus_for(sweep),
                    timeout_s=sweep.timeout_s,
                )
            )
    names = [j.name for j in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PipelineError(f"models: two jobs would be named {duplicates[0]!r}; give the models distinct 'name:'s")
    return jobs
