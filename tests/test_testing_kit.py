"""optkit.testing: what plugin authors use to run their pass through the host."""

from __future__ import annotations

import plugins_for_tests
import pytest
import torch
from torch import nn

from optkit.errors import PipelineError, PluginError
from optkit.testing import check_report_contract, run_pass, tiny_convnet


def test_run_pass_by_class_returns_the_report_and_the_stage(tmp_path):
    run = run_pass(plugins_for_tests.Scale, {"factor": 3}, tmp_path=tmp_path)

    check_report_contract(run.report)
    assert [s["name"] for s in run.report["stages"]] == ["baseline", "scale"]
    assert run.stage["details"] == {"factor": 3.0}
    assert run.metrics["params"] == run.baseline["metrics"]["params"] == sum(p.numel() for p in tiny_convnet().parameters())
    torch.testing.assert_close(run.drift["max_abs"], 2 * run.drift["reference_max_abs"], rtol=1e-6, atol=1e-7)
    with torch.inference_mode():
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(run.load_model()(x), 3 * tiny_convnet()(x), rtol=1e-5, atol=1e-6)


def test_run_pass_by_name_with_a_plugin_and_earlier_stages(tmp_path):
    run = run_pass("writes_artifact", tmp_path=tmp_path, plugins=[plugins_for_tests], before=["identity", {"scale": {"factor": 2}}])

    assert [s["name"] for s in run.report["stages"]] == ["baseline", "identity", "scale", "writes_artifact"]
    assert run.artifact("note.txt").read_text() == "written by writes_artifact\n"
    with pytest.raises(AssertionError, match=r"no artifact 'other.txt' in \['stages/03-writes_artifact/note.txt'\]"):
        run.artifact("other.txt")


def test_a_pass_that_breaks_preserves_outputs_fails_the_helper_with_the_host_message(tmp_path):
    with pytest.raises(AssertionError, match=r"^stage 'drifts' ended 'failed', expected 'ok': stage 1 \(drifts\) failed: "
                                             r"drifts must preserve outputs, but outputs drifted by max \|Δ\| = 0.5"):
        run_pass(plugins_for_tests.Drifts, tmp_path=tmp_path)


def test_expected_failures_can_be_asserted(tmp_path):
    run = run_pass(plugins_for_tests.Raises, tmp_path=tmp_path, expect_status="failed")
    assert run.stage["error"] == "stage 1 (raises) failed: RuntimeError: boom from the raises pass"
    assert run.report["status"] == "failed"


def test_bad_options_are_the_pipeline_error_a_user_would_see(tmp_path):
    with pytest.raises(PipelineError, match=r"pipeline.yaml:\d+: stage 1 \(scale\): option 'factor': Input should be a valid number"):
        run_pass(plugins_for_tests.Scale, {"factor": "big"}, tmp_path=tmp_path)


def test_a_malformed_pass_class_is_refused_before_running(tmp_path):
    class NoSummary(plugins_for_tests.Identity):
        name = "no_summary"
        summary = None

    with pytest.raises(PluginError, match="NoSummary.summary must be a one-line string"):
        run_pass(NoSummary, tmp_path=tmp_path)


def test_two_runs_in_one_folder_both_stay_on_disk(tmp_path):
    first = run_pass(plugins_for_tests.Identity, tmp_path=tmp_path)
    second = run_pass(plugins_for_tests.Identity, tmp_path=tmp_path)
    assert (first.run_dir.name, second.run_dir.name) == ("run", "run-2")
    assert (first.run_dir / "report.json").is_file()


def test_other_sources_and_measure_settings(tmp_path):
    run = run_pass(plugins_for_tests.Identity, tmp_path=tmp_path, source="python:plugins_for_tests:tiny_net",
                   model_kwargs={"num_classes": 4}, input_shape=(1, 3, 32, 32), measure={"latency": False, "flops": False})
    assert run.report["pipeline"]["model"]["input_shape"] == [1, 3, 32, 32]
    assert "latency_ms" not in run.metrics and "macs" not in run.metrics
    assert run.metrics["params"] == sum(p.numel() for p in plugins_for_tests.tiny_net(4).parameters())


def test_tiny_convnet_is_seeded_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = tiny_convnet(dropout=0.5), tiny_convnet()
    assert torch.equal(torch.rand(1), expected_next)
    torch.testing.assert_close(a[0].weight, b[0].weight, rtol=0, atol=0)
    assert isinstance(a[-2], nn.Dropout) and not a.training
