"""`optkit sweep`: sweep files, job planning, and one combined report whatever the executor."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from optkit.config.sweep import parse_sweep
from optkit.errors import PipelineError
from optkit.sweep.plan import plan_jobs

SMALL_SWEEP = """
output: {output}
device: cpu
input_shape: [1, 3, 64, 64]
measure: {{warmup: 0, iters: 2, threads: 1}}
workers: 2
models:
  - name: conv8
    source: python:torch.nn:Conv2d
    kwargs: {{in_channels: 3, out_channels: 8, kernel_size: 3}}
  - name: conv16
    source: python:torch.nn:Conv2d
    kwargs: {{in_channels: 3, out_channels: 16, kernel_size: 3}}
  - name: broken
    source: python:torch.nn:Conv2d
    kwargs: {{in_channels: 3, no_such_argument: 1}}
pipelines:
  baseline: []
"""


def _write_sweep(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(SMALL_SWEEP).format(output=tmp_path / "sweep"))
    return path


def _structure(folder: Path) -> dict[str, tuple[str, list[tuple[str, str]], dict[str, int]]]:
    """(status, [(stage, status)], {stage: params}) of every run in a combined report."""
    combined = json.loads((folder / "report.json").read_text())
    assert combined["kind"] == "optkit-comparison"
    return {
        f"{run['model']}/{run['pipeline']}": (
            run["report"]["status"],
            [(s["name"], s["status"]) for s in run["report"]["stages"]],
            {s["name"]: s["metrics"].get("params") for s in run["report"]["stages"]},
        )
        for run in combined["runs"]
    }


EXPECTED = {
    "conv8/baseline": ("ok", [("baseline", "ok")], {"baseline": 8 * 27 + 8}),
    "conv16/baseline": ("ok", [("baseline", "ok")], {"baseline": 16 * 27 + 16}),
    "broken/baseline": ("failed", [], {}),
}


def _check_sweep_result(result, folder: Path) -> None:
    assert result.exit_code == 1, result.output  # one job failed
    assert "2/3 jobs ok" in result.output
    assert _structure(folder) == EXPECTED
    markdown = (folder / "report.md").read_text()
    assert "## Errors" in markdown
    assert "**broken / baseline**" in markdown and "no_such_argument" in markdown
    assert (folder / "jobs" / "conv8--baseline.yaml").is_file()
    assert json.loads((folder / "runs" / "conv16--baseline" / "report.json").read_text())["status"] == "ok"
    assert "data:image/png;base64," in (folder / "report.html").read_text()


def test_local_sweep_gathers_every_job_and_reports_the_failure(tmp_path: Path, cli) -> None:
    result = cli("sweep", _write_sweep(tmp_path))
    _check_sweep_result(result, tmp_path / "sweep")
    assert "[3/3]" in result.output


@pytest.mark.slow
def test_ray_sweep_gives_the_same_report(tmp_path: Path, cli) -> None:
    result = cli("sweep", _write_sweep(tmp_path), "--executor", "ray", "--workers", "2")
    _check_sweep_result(result, tmp_path / "sweep")
    assert json.loads((tmp_path / "sweep" / "report.json").read_text())["meta"]["executor"] == "ray"


def test_plan_jobs_crosses_models_and_pipelines(tmp_path: Path) -> None:
    sweep = parse_sweep(textwrap.dedent("""
        device: cuda
        input_size: 96
        models:
          - torchvision:resnet18
          - {source: torchvision:vit_b_16, input_size_kwarg: image_size}
          - {source: torchvision:resnet50, input_shape: [2, 3, 64, 64]}
        pipelines:
          fuse: [fuse_bn]
          export: [fuse_bn, {export_onnx: {opset: 17}}]
    """))
    jobs = plan_jobs(sweep, tmp_path)
    assert [j.name for j in jobs] == [
        "resnet18--fuse", "resnet18--export", "vit_b_16--fuse", "vit_b_16--export", "resnet50--fuse", "resnet50--export",
    ]
    import yaml

    specs = [yaml.safe_load(j.pipeline_yaml) for j in jobs]
    assert specs[0]["model"]["input_shape"] == [1, 3, 96, 96]
    assert specs[2]["model"]["kwargs"] == {"image_size": 96}
    assert specs[4]["model"]["input_shape"] == [2, 3, 64, 64]  # a model's own shape wins over input_size
    assert specs[1]["passes"] == ["fuse_bn", {"export_onnx": {"opset": 17}}]
    assert all(j.num_gpus == 1.0 and j.device == "cuda" for j in jobs)
    assert jobs[0].run_dir == str(tmp_path.resolve() / "runs" / "resnet18--fuse")


def test_duplicate_job_names_are_refused(tmp_path: Path) -> None:
    sweep = parse_sweep("models: [torchvision:resnet18, timm:resnet18]\npipelines: {fuse: [fuse_bn]}\n")
    with pytest.raises(PipelineError, match="two jobs would be named 'resnet18--fuse'"):
        plan_jobs(sweep, tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ("models: [torchvision:resnet18]\npipelines: {fuse: [fuse_bn]}\nworkerz: 2\n", "s.yaml:3: unknown key 'workerz'; did you mean 'workers'?"),
    ("models: []\npipelines: {fuse: [fuse_bn]}\n", "s.yaml:1: key 'models': List should have at least 1 item"),
    ("models: [torchvision:resnet18]\npipelines: {fuse: [fuse_bn]}\nexecutor: slurm\n", "s.yaml:3: key 'executor': Input should be 'local' or 'ray'"),
    ("- just a list\n", "s.yaml:1: a sweep file is a mapping"),
])
def test_bad_sweep_files_name_file_line_and_key(text: str, message: str) -> None:
    with pytest.raises(PipelineError) as info:
        parse_sweep(text, "s.yaml")
    assert str(info.value).startswith(message)


def test_unknown_executor_and_missing_file(cli, tmp_path: Path) -> None:
    from optkit.sweep.executors import make_executor

    with pytest.raises(PipelineError, match="unknown executor 'dask'"):
        make_executor("dask")
    result = cli("sweep", tmp_path / "none.yaml")
    assert result.exit_code == 2 and f"{tmp_path / 'none.yaml'}: no such sweep file" in result.output


def test_models_of_several_inputs_keep_them_in_their_jobs(tmp_path: Path) -> None:
    """A model's own ``inputs`` go to its jobs as they are; a model that sets no input where the sweep sets none
    either lets its source bring its example inputs (an hf: model's token ids)."""
    sweep = parse_sweep(
        textwrap.dedent("""
        models:
          - source: python:my_models:raft_like
            inputs:
              - {name: frame1, shape: [1, 3, 64, 64]}
              - {name: frame2, shape: [1, 3, 64, 64]}
          - source: python:my_models:bert_tiny
            inputs:
              input_ids: {shape: [1, 16], dtype: int64, range: [0, 100]}
          - hf:bert
        pipelines:
          baseline: []
    """)
    )
    import yaml

    models = [yaml.safe_load(j.pipeline_yaml)["model"] for j in plan_jobs(sweep, tmp_path)]
    assert [m.get("input_shape") for m in models] == [None, None, None]
    assert [i["name"] for i in models[0]["inputs"]] == ["frame1", "frame2"]
    assert models[1]["inputs"] == {"input_ids": {"shape": [1, 16], "dtype": "int64", "range": [0, 100]}}
    assert "inputs" not in models[2]
    for model in models:  # each job's model section is a valid pipeline model: section
        parse_sweep(yaml.safe_dump({"models": [model], "pipelines": {"baseline": []}}))
