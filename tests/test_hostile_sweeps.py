"""Hostile sweep files (issue 25, item 5): names cannot inject YAML into job files or HTML into
report.md; job files are YAML dumps, never pasted text."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from optkit.config.sweep import parse_sweep
from optkit.errors import PipelineError
from optkit.sweep.plan import plan_jobs

SWEEP = """
device: cpu
input_shape: [1, 3, 8, 8]
models:
  - name: {model}
    source: python:torch.nn:Conv2d
    kwargs: {{in_channels: 3, out_channels: 4, kernel_size: 3}}
pipelines:
  {pipeline}: []
"""


def sweep_text(model: str = "conv", pipeline: str = "baseline") -> str:
    return textwrap.dedent(SWEEP).format(model=model, pipeline=pipeline)


@pytest.mark.parametrize(
    ("model", "pipeline", "key", "line"),
    [
        ("conv", '"x\\ndata: {eval: imagefolder:/etc}"', "pipelines", 8),
        ("conv", '"<script>alert(1)</script>"', "pipelines", 8),
        ('"conv\\nseed: 666"', "baseline", "models.0.name", 5),
        ('"<b>bold</b>"', "baseline", "models.0.name", 5),
        ('"../../escape"', "baseline", "models.0.name", 5),
    ],
)
def test_names_outside_the_whitelist_are_refused_with_the_line(tmp_path, model, pipeline, key, line):
    with pytest.raises(PipelineError, match=rf"^sweep.yaml:{line}: key '{key}'.*: .*letters, digits and _ \. \+ - only"):
        parse_sweep(sweep_text(model, pipeline), "sweep.yaml", tmp_path)


def test_job_files_are_yaml_dumps_whatever_the_names(tmp_path):
    """Names that got past validation (set in code) still cannot add keys to a job file."""
    sweep = parse_sweep(sweep_text(), "sweep.yaml", tmp_path)
    sweep.models[0] = sweep.models[0].model_copy(update={"name": "conv\nseed: 666"})
    sweep = sweep.model_copy(update={"pipelines": {"p\nsave_model: true": []}})
    (job,) = plan_jobs(sweep, tmp_path / "out")
    loaded = yaml.safe_load(job.pipeline_yaml)
    assert loaded["seed"] == 0 and loaded["save_model"] is False
    assert job.pipeline_yaml.splitlines()[0] == f"# optkit sweep job {job.name}"
    assert "\n" not in job.name
