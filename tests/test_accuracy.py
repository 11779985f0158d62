"""Accuracy and agreement at every stage, ONNX included, equal to an independent evaluation of the
saved files; the accuracy budget; the shipped digits model; accuracy in info and comparison reports."""

from __future__ import annotations

import json
import operator
from pathlib import Path

import onnxruntime as ort
import plugins_for_tests
import pytest
import torch
import yaml
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from optkit.config.pipeline import load_pipeline
from optkit.config.sweep import parse_sweep
from optkit.data.digits import DIGITS_WEIGHTS, digits_cnn
from optkit.errors import StageError
from optkit.host.facade import Host
from optkit.measure.accuracy import AccuracyTracker, Evaluation, evaluate
from optkit.run.runner import run_pipeline
from optkit.sweep.plan import plan_jobs

EVAL_BATCH = 25

def write(tmp_path, digits, passes: str, measure: str = "") -> Path:
    path = tmp_path / "digits.yaml"
    data = f"  eval: {{source: imagefolder:{digits.val}, batch_size: {EVAL_BATCH}}}"
    path.write_text(plugins_for_tests.DIGITS_PIPELINE.format(batch=2, measure=measure, data=data, passes=passes))
    return path


def independent_predictions(model_or_session, digits) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 of every val image and the labels, read with torchvision alone (not optkit's loaders)."""
    dataset = ImageFolder(str(digits.val), transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    session = isinstance(model_or_session, ort.InferenceSession)
    predictions, labels = [], []
    for inputs, targets in DataLoader(dataset, batch_size=2 if session else EVAL_BATCH):  # the graph takes pairs
        if session:
            predictions.append(torch.from_numpy(model_or_session.run(None, {"input": inputs.numpy()})[0]).argmax(1))
        else:
            with torch.inference_mode():
                predictions.append(model_or_session(inputs).argmax(1))
        labels.append(targets)
    return torch.cat(predictions), torch.cat(labels)


@pytest.fixture(scope="module")
def digits_run(digits, tmp_path_factory):
    """fuse_bn -> prune_l1 channels -> export_onnx (fixed batch) on the shipped model, evaluated on the val split."""
    tmp_path = tmp_path_factory.mktemp("digits-run")
    passes = "  - fuse_bn\n  - prune_l1: {mode: channels, amount: 0.1}\n  - export_onnx: {dynamic_batch: false}"
    host = Host()
    report, run_dir = run_pipeline(load_pipeline(write(tmp_path, digits, passes), host.get_pass), host, output=tmp_path / "run")
    return report, run_dir


def test_every_stage_has_accuracy_and_agreement_onnx_included(digits_run):
    report, run_dir = digits_run
    assert report.status == "ok", report.error
    stages = {s["name"]: s["metrics"] for s in report.to_dict()["stages"]}  # as report.json holds them
    assert list(stages) == ["baseline", "fuse_bn", "prune_l1", "export_onnx"]
    assert stages["export_onnx"]["runtime"] == "onnxruntime"
    for name, metrics in stages.items():
        assert set(metrics["accuracy"]) == {"top1", "top5", "n"} and metrics["accuracy"]["n"] == 360
        # After the baseline, agreement also says how closely the stage follows the one before it.
        assert set(metrics["agreement"]) == ({"top1", "n"} if name == "baseline" else {"top1", "n", "previous"})
    assert set(stages["export_onnx"]["agreement"]["previous"]) == {"top1", "cosine", "n", "cosine_n"}
    folded = stages["fuse_bn"]["agreement"]["previous"]
    assert folded["top1"] == 1.0 and folded["n"] == folded["cosine_n"] == 360
    torch.testing.assert_close(folded["cosine"], 1.0, rtol=0, atol=1e-9)  # folding BatchNorm is exact to rounding
    assert stages["baseline"]["accuracy"]["top1"] >= 0.97 and stages["baseline"]["agreement"]["top1"] == 1.0
    assert stages["fuse_bn"]["accuracy"] == stages["baseline"]["accuracy"]  # folding BatchNorm changes no prediction
    # Channel pruning without fine-tuning costs accuracy: the report says so, stage by stage.
    assert stages["prune_l1"]["accuracy"]["top1"] < stages["baseline"]["accuracy"]["top1"]
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["stages"][3]["metrics"]["accuracy"] == stages["export_onnx"]["accuracy"]
    assert on_disk["stages"][0]["details"]["data"]["eval"]["samples"] == 360


def test_the_numbers_equal_an_independent_evaluation_of_the_saved_files(digits_run, digits):
    report, run_dir = digits_run
    stages = {s.name: s.metrics for s in report.stages}
    baseline, labels = independent_predictions(digits_cnn(pretrained=True), digits)
    saved = torch.load(run_dir / "model.pt", weights_only=False).eval()  # written by this very run
    pruned, _ = independent_predictions(saved, digits)
    onnx_file = run_dir / next(a for a in report.stages[3].artifacts if a.endswith(".onnx"))
    exported, _ = independent_predictions(ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]), digits)

    for name, predictions in (("baseline", baseline), ("prune_l1", pruned), ("export_onnx", exported)):
        assert stages[name].accuracy.top1 == float((predictions == labels).double().mean()), name
        assert stages[name].agreement.top1 == float((predictions == baseline).double().mean()), name
    assert stages["export_onnx"].agreement.previous.top1 == float((exported == pruned).double().mean())


def test_max_accuracy_drop_fails_exactly_the_stage_that_breaks_it(digits, tmp_path, cli):
    # scale by 2 keeps every argmax; scale by -1 turns it into the argmin
    passes = "  - fuse_bn\n  - scale: {factor: 2}\n  - scale: {factor: -1}\n  - identity"
    path = write(tmp_path, digits, passes, measure=", max_accuracy_drop: 0.01")
    host = Host.with_plugins(plugins_for_tests)
    report, run_dir = run_pipeline(load_pipeline(path, host.get_pass), host, output=tmp_path / "run")

    assert [s.status for s in report.stages] == ["ok", "ok", "ok", "failed", "skipped"]
    base = report.stages[0].metrics.accuracy.top1
    failed = report.stages[3]
    assert failed.metrics.accuracy.top1 < 0.05 and failed.metrics.agreement.top1 < 0.05  # kept on the failed stage
    assert report.error == (
        f"stage 3 (scale) failed: top-1 accuracy on data.eval fell from {base:.2%} (baseline) to "
        f"{failed.metrics.accuracy.top1:.2%}, a drop of {(base - failed.metrics.accuracy.top1) * 100:.2f} points, "
        "over measure.max_accuracy_drop 0.01 (1.00 points); raise it to accept the stage"
    )
    assert json.loads((run_dir / "report.json").read_text())["status"] == "failed"
    assert not (run_dir / "model.pt").exists()


def test_the_budget_compares_sample_counts_so_a_drop_of_exactly_the_budget_passes():
    def evaluation(correct: int) -> Evaluation:
        labels = torch.zeros(100, dtype=torch.long)
        return Evaluation(predictions=(torch.arange(100) >= correct).long(), top5=None, labels=labels, classes=2)

    tracker = AccuracyTracker([], torch.device("cpu"), max_drop=0.01)
    tracker.baseline = evaluation(90)
    tracker.check_budget(evaluation(89).accuracy())  # 0.9 - 0.89 = 0.01000000000000001 as floats
    with pytest.raises(StageError, match=r"fell from 90.00% \(baseline\) to 88.00%, a drop of 2.00 points"):
        tracker.check_budget(evaluation(88).accuracy())


def test_agreement_is_not_claimed_between_different_class_counts():
    from optkit.measure.accuracy import agreement_with

    ten = Evaluation(torch.zeros(4, dtype=torch.long), None, torch.full((4,), -1), classes=10)
    five = Evaluation(torch.zeros(4, dtype=torch.long), None, torch.full((4,), -1), classes=5)
    assert agreement_with(five, ten).model_dump(exclude_none=True) == {"comparable": False, "classes": 5, "reference_classes": 10}
    assert agreement_with(ten, ten).model_dump(exclude_none=True) == {"top1": 1.0, "n": 4}
    assert ten.accuracy() is None  # no labels: no accuracy


def test_the_shipped_digits_weights_reach_97_percent_on_val(digits):
    assert DIGITS_WEIGHTS.stat().st_size < 1_000_000
    model = digits_cnn(pretrained=True)
    assert sum(p.numel() for p in model.parameters()) == 84_442
    dataset = ImageFolder(str(digits.val), transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    result = evaluate(model, DataLoader(dataset, batch_size=90), torch.device("cpu"))
    accuracy = result.accuracy()
    assert accuracy is not None and accuracy.n == 360 and accuracy.top1 >= 0.97 and accuracy.top5 >= 0.99


def test_the_digits_model_prunes_and_traces(digits):
    """Channel pruning needs a torch.fx-traceable model of plain modules."""
    graph = torch.fx.symbolic_trace(digits_cnn())
    assert {n.target for n in graph.graph.nodes if n.op == "call_function"} == {operator.add}


def test_info_reports_accuracy(cli, digits):
    result = cli("info", "python:optkit.data:digits_cnn", "-s", "1,3,32,32", "--weights", DIGITS_WEIGHTS, "--data", digits.val,
                 "--limit", "100", "--no-latency", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    reference = evaluate(digits_cnn(pretrained=True), DataLoader(ImageFolder(
        str(digits.val), transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])), batch_size=100), torch.device("cpu"))
    assert info["accuracy"]["n"] == 100
    assert info["accuracy"]["top1"] == float((reference.predictions[:100] == reference.labels[:100]).double().mean())
    assert info["data"]["source"] == f"imagefolder:{digits.val}"

    table = cli("info", "python:optkit.data:digits_cnn", "-s", "1,3,32,32", "--data", digits.val, "--limit", "20", "--no-latency")
    assert "│ accuracy        │ top-1 " in table.output and "(n 20," in table.output
    bad = cli("info", "python:optkit.data:digits_cnn", "-s", "1,3,32,32", "--data", digits.val, "--transform", "{resize: 40}")
    assert bad.exit_code == 2 and "samples have shape [3, 40, 40], but model.input_shape [1, 3, 32, 32]" in bad.output


def test_comparison_reports_show_accuracy_and_agreement(digits_run, tmp_path, cli):
    _, run_dir = digits_run
    result = cli("report", run_dir, "-o", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "cmp" / "report.md").read_text()
    html = (tmp_path / "cmp" / "report.html").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| model | pipeline"))
    assert "| accuracy | agreement |" in header
    row = next(line for line in markdown.splitlines() if "| baseline |" in line)
    assert "| 100.00% |" in row and "Accuracy is top-1 on data.eval" in markdown
    assert "<th>accuracy</th><th>agreement</th>" in html
    assert "agreement" in (run_dir / "report.md").read_text()


def test_sweeps_carry_the_data_section_with_paths_from_the_sweep_file(tmp_path):
    sweep = parse_sweep("models: [python:optkit.testing:digits_cnn]\npipelines: {base: []}\n"
                        "data: {eval: imagefolder:data/val}\nmeasure: {max_accuracy_drop: 0.02}\n", base_dir=tmp_path)
    (job,) = plan_jobs(sweep, tmp_path / "out")
    written = yaml.safe_load(job.pipeline_yaml)
    assert written["data"] == {"eval": {"source": "imagefolder:data/val"}, "root": str(tmp_path.resolve())}
    assert written["measure"]["max_accuracy_drop"] == 0.02
    pipeline = load_pipeline(_written(job), Host().get_pass)
    assert pipeline.data_dir == tmp_path.resolve()


def _written(job):
    path = Path(job.pipeline_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(job.pipeline_yaml)
    return path


def test_the_demo_pipeline_is_valid(cli):
    result = cli("validate", Path(__file__).resolve().parents[1] / "examples" / "digits.yaml")
    assert result.exit_code == 0 and "3 stage(s): fuse_bn, prune_l1, export_onnx" in result.output
