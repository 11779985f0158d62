"""report.json is written and read through the report models (issue 23): every example pipeline's
report validates against the published JSON Schema with the standard ``jsonschema`` validator, a
model with NaN outputs still gives valid JSON, a value in ``details`` that is not JSON fails its
stage naming the key, and reports of another schema version are read or refused with a clear message."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import plugins_for_tests
import pytest
import torch
import yaml
from torch import nn

from optkit import Pass, PassContext
from optkit.config.pipeline import load_pipeline, parse_pipeline
from optkit.host.facade import Host
from optkit.results import SCHEMA_VERSION, ComparisonReport, RunReport, comparison_json_schema, optkit_version, report_json_schema
from optkit.run.runner import run_pipeline
from optkit.testing import check_report_contract

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
#: Pipelines that take more than a few seconds even made cheap (a 5-stage ResNet-18, fine-tuning).
HEAVY = {"resnet18.yaml", "digits_finetune.yaml"}
SWEEPS = [p for p in EXAMPLES if "pipelines" in yaml.safe_load(p.read_text())] + [ROOT / "benchmarks" / "pipelines" / "zoo.yaml"]


def strict_json(text: str) -> dict:
    """``json.loads`` that refuses the tokens NaN, Infinity and -Infinity (as most JSON readers do)."""

    def refuse(token: str) -> float:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def validate(report: dict) -> None:
    jsonschema.validate(report, report_json_schema(), cls=jsonschema.Draft202012Validator)


def test_the_published_schema_is_a_valid_json_schema_and_documents_every_field(cli):
    schema = json.loads(cli("schema", "--report").stdout)
    assert schema == report_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema"]["default"] == SCHEMA_VERSION == 2
    undocumented = [f"{name}.{field}" for name, definition in [("RunReport", schema), *schema["$defs"].items()]
                    for field, spec in definition.get("properties", {}).items() if not spec.get("description")]
    assert undocumented == []
    stage = schema["$defs"]["StageResult"]["properties"]
    assert stage["status"]["$ref"] == "#/$defs/StageStatus"
    assert schema["$defs"]["StageStatus"]["enum"] == ["ok", "failed", "skipped", "interrupted"]
    assert {"measure_s", "details", "artifacts"} <= set(stage)
    assert "macs_by" in schema["$defs"]["StageMetrics"]["properties"]


def _one_epoch(stage: str | dict) -> str | dict:
    """A stage that trains (``epochs``) trains one epoch at most."""
    if isinstance(stage, dict):
        [(name, options)] = stage.items()
        if isinstance(options, dict) and "epochs" in options:
            return {name: {**options, "epochs": min(options["epochs"], 1)}}
    return stage


def _cheap(document: dict, digits) -> dict:
    """An example pipeline made cheap to run (fewer timed calls, a small input, one epoch) with its
    passes unchanged, its data read from the digits written for the test session."""
    document = dict(document)
    document["measure"] = {**(document.get("measure") or {}), "warmup": 0, "iters": 2, "noise_max_cv": None}
    shape = document["model"]["input_shape"]
    document["model"] = {**document["model"], "input_shape": [*shape[:2], *(min(s, 64) for s in shape[2:])]}
    for role, entry in (document.get("data") or {}).items():
        folder = digits.val if role == "eval" else digits.train
        document["data"][role] = {**entry, "source": f"imagefolder:{folder}"} if isinstance(entry, dict) else f"imagefolder:{folder}"
    document["passes"] = [_one_epoch(stage) for stage in document["passes"]]
    return document


def _run_and_validate(document: dict, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    host = Host()
    _, run_dir = run_pipeline(load_pipeline(path, host.get_pass, producers=host.passes_producing), host,
                                   device="cpu", output=tmp_path / "run")

    data = strict_json((run_dir / "report.json").read_text())
    assert data["status"] == "ok", data["error"]
    validate(data)
    check_report_contract(data)
    assert RunReport.load(run_dir).to_dict() == data  # read back through the same models, unchanged


@pytest.mark.parametrize("example", [
    pytest.param(p, marks=[pytest.mark.slow] if p.name in HEAVY else [], id=p.name)
    for p in EXAMPLES if "passes" in yaml.safe_load(p.read_text())
])
def test_every_example_pipeline_writes_a_report_that_validates_against_the_published_schema(example, tmp_path, digits):
    _run_and_validate(_cheap(yaml.safe_load(example.read_text()), digits), tmp_path, example.name)


@pytest.mark.slow
@pytest.mark.parametrize("sweep_file", SWEEPS, ids=lambda p: p.name)
def test_a_job_of_every_sweep_and_benchmark_pipeline_file_validates_against_the_published_schema(sweep_file, tmp_path, digits):
    """The first model's longest pipeline of each sweep file, run as its job would run it (made cheap)."""
    from optkit.config.sweep import load_sweep
    from optkit.sweep.plan import plan_jobs

    jobs = plan_jobs(load_sweep(sweep_file), tmp_path / "sweep")
    first_model = [job for job in jobs if job.model == jobs[0].model]
    job = max(first_model, key=lambda job: len(yaml.safe_load(job.pipeline_yaml)["passes"]))
    _run_and_validate(_cheap(yaml.safe_load(job.pipeline_yaml), digits), tmp_path, f"{job.name}.yaml")


class NanOutputs(Pass):
    name = "nan_outputs"
    summary = "Make every output NaN and one of them infinite, and report a NaN detail."

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        with torch.no_grad():
            model[-1].bias.fill_(math.nan)
        ctx.details["worst"] = math.inf
        return model


class TensorDetail(Pass):
    name = "tensor_detail"
    summary = "Put a tensor into details."

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        ctx.details["kept"] = 3
        ctx.details["scale"] = {"factor": torch.tensor(0.5)}
        return model


class ReportPlugin:
    __name__ = "report_plugin"

    from optkit import hookimpl

    @hookimpl
    def optkit_register_passes(self, register):
        register(NanOutputs)
        register(TensorDetail)


def _run(tmp_path, passes: str) -> tuple[RunReport, Path]:
    host = Host.with_plugins(plugins_for_tests, ReportPlugin())
    return run_pipeline(parse_pipeline(plugins_for_tests.TINY_PIPELINE.format(passes=passes), host.get_pass), host,
                        output=tmp_path / "run")


def test_a_model_with_nan_outputs_gives_valid_json_with_null_and_the_reason(tmp_path):
    report, run_dir = _run(tmp_path, "  - nan_outputs")
    assert math.isnan(report.stages[1].metrics.drift.max_abs)  # in memory, the figure as measured

    data = strict_json((run_dir / "report.json").read_text())  # no bare NaN or Infinity token
    validate(data)
    stage = data["stages"][1]
    drift = stage["metrics"]["drift"]
    assert drift["max_abs"] is None and drift["non_finite"]["/max_abs"] == "nan"
    assert drift["outputs"][0]["non_finite"]["/cosine"] == "nan"
    assert stage["details"]["worst"] is None and stage["non_finite"] == {"/details/worst": "inf"}
    loaded = RunReport.load(run_dir).stages[1]  # reading it back restores the values
    assert math.isnan(loaded.metrics.drift.max_abs) and loaded.details["worst"] == math.inf


def test_a_detail_that_is_not_json_fails_its_stage_naming_the_key(tmp_path):
    report, run_dir = _run(tmp_path, "  - tensor_detail\n  - identity")

    assert [s.status for s in report.stages] == ["ok", "failed", "skipped"]
    assert report.stages[1].error == (
        "stage 1 (tensor_detail) failed: details['scale']['factor'] is a Tensor, not a JSON value; "
        "convert it (float(x), x.tolist(), str(x)): report.json holds JSON values only"
    )
    data = strict_json((run_dir / "report.json").read_text())
    validate(data)
    assert data["stages"][1]["details"] == {"kept": 3}  # the JSON keys stay; the error names the other


def test_report_reads_an_older_schema_and_says_so(tmp_path, cli):
    _, run_dir = _run(tmp_path, "  - identity")
    data = json.loads((run_dir / "report.json").read_text())
    (run_dir / "report.json").write_text(json.dumps({**data, "schema": 1}))

    result = cli("report", str(run_dir), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"note: 1 of the runs ({run_dir}) have report.json schema 1, written by an older optkit")
    assert "report.json schema 1" in (tmp_path / "out" / "report.md").read_text()


def test_report_refuses_a_newer_schema_naming_the_file(tmp_path, cli):
    _, run_dir = _run(tmp_path, "  - identity")
    data = json.loads((run_dir / "report.json").read_text())
    (run_dir / "report.json").write_text(json.dumps({**data, "schema": 3, "optkit_version": "9.0"}))

    result = cli("report", str(run_dir), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {run_dir / 'report.json'}: report.json has schema 3, written by a newer optkit (9.0); "
        f"this optkit ({optkit_version()}) reads schema 2 and older: upgrade optkit\n"
    )


def test_the_comparison_schema_is_published_and_holds_runs_to_the_report_schema(cli):
    schema = json.loads(cli("schema", "--comparison").stdout)
    assert schema == comparison_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["kind"]["const"] == "optkit-comparison"
    # a run inside a comparison is held to exactly the run report's schema (its required fields included)
    report = report_json_schema()
    assert schema["$defs"]["RunReport"]["required"] == report["required"]
    assert schema["$defs"]["StageResult"] == report["$defs"]["StageResult"]
    undocumented = [f"{name}.{field}" for name, definition in [("ComparisonReport", schema), *schema["$defs"].items()]
                    for field, spec in definition.get("properties", {}).items() if not spec.get("description")]
    assert undocumented == []
    assert cli("schema", "--report", "--comparison").exit_code == 2


def test_a_real_comparison_validates_against_its_published_schema_and_reads_back_unchanged(tmp_path, cli):
    _, first = _run(tmp_path / "a", "  - nan_outputs")  # a NaN drift: null plus the reason inside the comparison too
    _, second = _run(tmp_path / "b", "  - identity")
    result = cli("report", str(first), str(second), "-o", str(tmp_path / "cmp"), "--title", "two runs")
    assert result.exit_code == 0, result.output

    data = strict_json((tmp_path / "cmp" / "report.json").read_text())
    jsonschema.validate(data, comparison_json_schema(), cls=jsonschema.Draft202012Validator)
    assert (data["kind"], data["status"], data["meta"]["title"]) == ("optkit-comparison", "ok", "two runs")
    assert data["runs"][0]["report"]["stages"][1]["metrics"]["drift"]["non_finite"]["/max_abs"] == "nan"
    comparison = ComparisonReport.load(tmp_path / "cmp")
    assert [(run.pipeline, run.run_dir) for run in comparison.runs] == [("nan_outputs", str(first)), ("identity", str(second))]
    assert math.isnan(comparison.runs[0].report.stages[1].metrics.drift.max_abs)
    assert comparison.meta.sources == [str(first), str(second)]
    assert json.loads(comparison.to_json()) == data  # written and read through the same models, unchanged

    broken = {**data, "runs": [{**data["runs"][0], "seconds": "slow"}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, comparison_json_schema(), cls=jsonschema.Draft202012Validator)


def test_the_committed_model_zoo_comparison_validates_against_the_comparison_schema():
    """The benchmark's comparison (written by the optkit of its day) still fits the published schema and the models."""
    path = ROOT / "benchmarks" / "results" / "cpu" / "report.json"
    data = strict_json(path.read_text())
    jsonschema.validate(data, comparison_json_schema(), cls=jsonschema.Draft202012Validator)
    comparison = ComparisonReport.load(path)
    assert comparison.kind == "optkit-comparison" and len(comparison.runs) == len(data["runs"]) > 0
    assert all(run.report.stages[0].name == "baseline" for run in comparison.runs if run.report.stages)
