"""The runner: baseline, then each stage applied and measured; failures keep everything so far."""

from __future__ import annotations

import json

import plugins_for_tests
import pytest
import torch

from optkit.config.pipeline import parse_pipeline
from optkit.errors import PipelineError
from optkit.host.facade import Host
from optkit.run.run_dirs import prepare_run_dir
from optkit.run.runner import example_input, run_pipeline


@pytest.fixture(scope="module")
def test_host() -> Host:
    return Host.with_plugins(plugins_for_tests)


def run(test_host, tmp_path, passes: str, extra: str = "", **kwargs):
    text = plugins_for_tests.TINY_PIPELINE.format(passes=passes) + extra
    return run_pipeline(parse_pipeline(text, test_host.get_pass), test_host, output=tmp_path / "run", **kwargs)


def reference_outputs() -> torch.Tensor:
    with torch.inference_mode():
        return plugins_for_tests.tiny_net().eval()(example_input([2, 3, 64, 64], 0, torch.device("cpu")))


def test_successful_run_measures_every_stage_and_saves_the_model(test_host, tmp_path):
    report, run_dir = run(test_host, tmp_path, "  - identity\n  - scale: {factor: 3}")

    assert report.status == "ok" and report.error is None
    assert [(s.name, s.pass_name, s.index, s.status) for s in report.stages] == [
        ("baseline", None, 0, "ok"), ("identity", "identity", 1, "ok"), ("scale", "scale", 2, "ok")
    ]
    params = sum(p.numel() for p in plugins_for_tests.tiny_net().parameters())
    assert all(s.metrics.params == params for s in report.stages)
    assert report.stages[1].details == {"touched": 0}
    assert sorted(p.name for p in run_dir.iterdir()) == ["model.pt", "report.json", "report.md"]
    saved = torch.load(run_dir / "model.pt", weights_only=False)  # written by this very test
    with torch.inference_mode():
        got = saved(example_input([2, 3, 64, 64], 0, torch.device("cpu")))
    torch.testing.assert_close(got, 3 * reference_outputs(), rtol=1e-6, atol=1e-6)


def test_drift_is_measured_against_the_baseline_and_the_previous_stage(test_host, tmp_path):
    report, _ = run(test_host, tmp_path, "  - scale: {factor: 3}\n  - scale: {factor: 2}")
    reference = reference_outputs().abs().max().item()

    baseline, first, second = (s.metrics.drift for s in report.stages)
    assert (baseline.max_abs, baseline.top1_agreement) == (0.0, 1.0)  # the reference itself
    torch.testing.assert_close(baseline.cosine, 1.0, rtol=0, atol=1e-12)
    torch.testing.assert_close(first.max_abs, 2 * reference, rtol=1e-5, atol=1e-6)  # |3y - y|
    torch.testing.assert_close(second.max_abs, 5 * reference, rtol=1e-5, atol=1e-6)  # |6y - y|
    torch.testing.assert_close(second.previous.max_abs, 3 * reference, rtol=1e-5, atol=1e-6)  # |6y - 3y|
    assert second.top1_agreement == 1.0  # scaling by a positive factor keeps the argmax


def test_failing_stage_keeps_earlier_stages_artifacts_and_a_partial_report(test_host, tmp_path):
    report, run_dir = run(test_host, tmp_path, "  - identity\n  - writes_artifact\n  - raises\n  - scale")

    assert report.status == "failed"
    assert [s.status for s in report.stages] == ["ok", "ok", "ok", "failed", "skipped"]
    assert report.error == "stage 3 (raises) failed: RuntimeError: boom from the raises pass"
    failed = report.stages[3]
    assert failed.error == report.error and not failed.metrics
    assert failed.artifacts == ["stages/03-raises/traceback.txt"]
    traceback = (run_dir / failed.artifacts[0]).read_text()
    assert "RuntimeError: boom from the raises pass" in traceback and "plugins_for_tests.py" in traceback
    assert (run_dir / "stages/02-writes_artifact/note.txt").read_text() == "written by writes_artifact\n"
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["status"] == "failed"
    assert [s["status"] for s in on_disk["stages"]] == ["ok", "ok", "ok", "failed", "skipped"]
    assert "| 3 | raises | failed |" in (run_dir / "report.md").read_text()
    assert not (run_dir / "model.pt").exists()  # only a finished run saves its model


def test_stage_that_breaks_preserves_outputs_fails_with_the_figures(test_host, tmp_path):
    report, _ = run(test_host, tmp_path, "  - drifts\n  - identity")

    assert [s.status for s in report.stages] == ["ok", "failed", "skipped"]
    drifted = report.stages[1]
    torch.testing.assert_close(drifted.metrics.drift.max_abs, 0.5, rtol=0, atol=1e-6)  # bias += 0.5
    assert drifted.error.startswith("stage 1 (drifts) failed: drifts must preserve outputs, but outputs drifted by max |Δ| = 0.5, over the tolerance")
    assert drifted.error.endswith("raise measure.drift_tolerance to accept it")


def test_drift_tolerance_from_the_pipeline_applies(test_host, tmp_path):
    text = "  - drifts"
    report, _ = run(test_host, tmp_path, text)
    assert report.stages[1].status == "failed"
    loose = plugins_for_tests.TINY_PIPELINE.format(passes=text).replace(
        "measure: {warmup: 1, iters: 3}", "measure: {warmup: 1, iters: 3, drift_tolerance: {atol: 0.6}}"
    )
    report, _ = run_pipeline(parse_pipeline(loose, test_host.get_pass), test_host, output=tmp_path / "loose")
    assert report.stages[1].status == "ok"


def test_interrupt_in_a_pass_stops_the_run_as_interrupted(test_host, tmp_path):
    report, run_dir = run(test_host, tmp_path, "  - identity\n  - interrupts\n  - scale")

    assert report.status == "interrupted"
    assert [s.status for s in report.stages] == ["ok", "ok", "interrupted", "skipped"]
    assert report.stages[2].error == "interrupted (Ctrl-C)"
    assert json.loads((run_dir / "report.json").read_text())["status"] == "interrupted"


def test_pass_returning_neither_module_nor_artifact_fails_by_name(test_host, tmp_path):
    report, _ = run(test_host, tmp_path, "  - returns_nothing")
    assert report.stages[1].error == (
        "stage 1 (returns_nothing) failed: pass 'returns_nothing' returned NoneType, not a module or an artifact"
    )


def test_no_temporary_files_are_left_behind(test_host, tmp_path):
    _, run_dir = run(test_host, tmp_path, "  - writes_artifact\n  - raises")
    leftovers = [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_second_run_never_overwrites_the_first(test_host, tmp_path):
    _, first = run(test_host, tmp_path, "  - identity")
    _, second = run(test_host, tmp_path, "  - scale")
    _, third = run(test_host, tmp_path, "  - scale")

    assert (first.name, second.name, third.name) == ("run", "run-2", "run-3")
    assert json.loads((first / "report.json").read_text())["stages"][1]["name"] == "identity"


def test_overwrite_replaces_the_earlier_run(test_host, tmp_path):
    _, first = run(test_host, tmp_path, "  - writes_artifact")
    _, again = run(test_host, tmp_path, "  - identity", overwrite=True)

    assert again == first
    assert not (first / "stages").exists()  # the earlier run's files are gone, not mixed in
    assert json.loads((first / "report.json").read_text())["stages"][1]["name"] == "identity"


def test_a_folder_that_holds_something_else_is_refused(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(PipelineError, match="is not empty and holds no optkit run; choose another --output"):
        prepare_run_dir(tmp_path, overwrite=True)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(PipelineError, match="exists and is not a folder"):
        prepare_run_dir(tmp_path / "out")


def test_the_example_input_is_seeded():
    cpu = torch.device("cpu")
    torch.testing.assert_close(example_input([1, 3, 8, 8], 7, cpu), example_input([1, 3, 8, 8], 7, cpu), rtol=0, atol=0)
    assert not torch.equal(example_input([1, 3, 8, 8], 7, cpu), example_input([1, 3, 8, 8], 8, cpu))


def test_model_that_cannot_be_built_fails_before_any_output(test_host, tmp_path):
    text = plugins_for_tests.TINY_PIPELINE.format(passes="  - identity").replace("tiny_net", "no_such_net")
    with pytest.raises(PipelineError, match="^model.source: plugins_for_tests has no callable 'no_such_net'$"):
        run_pipeline(parse_pipeline(text, test_host.get_pass), test_host, output=tmp_path / "run")
    assert not (tmp_path / "run").exists()
