"""Comparison plots: the points they are drawn from, and PNGs that decode."""

from __future__ import annotations

import io

import matplotlib.image as matplotlib_image
import torch

from optkit.reporting.plots import latency_vs_gmacs_png, pass_speedups_png, stage_points
from optkit.results import ComparedRun, RunReport, StageResult


def _stage(name: str, index: int, p50: float | None, gmacs: float | None = 1.0, status: str = "ok") -> StageResult:
    metrics = {"gmacs": gmacs} if gmacs is not None else {}
    if p50 is not None:
        metrics["latency_ms"] = {"p50": p50}
    return StageResult(name, None if index == 0 else name, index, status=status, metrics=metrics)


def _run(model: str, pipeline: str, stages: list[StageResult], device: str = "cpu") -> ComparedRun:
    report = RunReport({"device": device}, {"model": {"source": f"torchvision:{model}"}}, stages, status="ok")
    return ComparedRun(report, pipeline=pipeline)


def _decode(png: bytes) -> torch.Tensor:
    return torch.from_numpy(matplotlib_image.imread(io.BytesIO(png), format="png"))


def test_stage_points_speedup_is_against_the_previous_measured_stage() -> None:
    run = _run("resnet18", "fuse_export", [
        _stage("baseline", 0, 10.0, 1.8), _stage("fuse_bn", 1, 8.0, 1.8),
        _stage("export_onnx", 2, 4.0, 1.8), _stage("tta", 3, None, status="skipped"),
    ])
    points = stage_points([run])
    assert [p.stage for p in points] == ["baseline", "fuse_bn", "export_onnx"]  # the skipped stage is left out
    assert points[0].speedup_vs_previous is None
    torch.testing.assert_close([p.speedup_vs_previous for p in points[1:]], [10.0 / 8.0, 8.0 / 4.0], rtol=1e-12, atol=0)
    assert (points[0].model, points[0].pipeline, points[0].device) == ("resnet18", "fuse_export", "cpu")


def test_a_failed_stage_is_not_plotted_and_the_next_compares_to_the_last_good_one() -> None:
    run = _run("m", "p", [_stage("baseline", 0, 9.0), _stage("a", 1, 1.0, status="failed"), _stage("b", 2, 3.0)])
    points = stage_points([run])
    assert [p.stage for p in points] == ["baseline", "b"]
    torch.testing.assert_close(points[1].speedup_vs_previous, 3.0, rtol=1e-12, atol=0)


def test_plots_are_pngs_and_one_panel_per_pipeline() -> None:
    one = [_run("a", "fuse", [_stage("baseline", 0, 10.0), _stage("fuse_bn", 1, 5.0)]),
           _run("b", "fuse", [_stage("baseline", 0, 20.0, 4.0), _stage("fuse_bn", 1, 10.0, 4.0)])]
    two = one + [_run("a", "export", [_stage("baseline", 0, 10.0), _stage("export_onnx", 1, 2.0)])]
    scatter = _decode(latency_vs_gmacs_png(stage_points(one)))
    assert scatter.ndim == 3 and scatter.shape[0] > 200 and scatter.shape[1] > 300
    bars_one, bars_two = _decode(pass_speedups_png(stage_points(one))), _decode(pass_speedups_png(stage_points(two)))
    assert bars_two.shape[0] > 1.6 * bars_one.shape[0]  # a second pipeline adds a panel below the first


def test_no_plot_without_data() -> None:
    baseline_only = [_run("a", "baseline", [_stage("baseline", 0, 10.0)])]
    assert pass_speedups_png(stage_points(baseline_only)) is None
    assert latency_vs_gmacs_png(stage_points([_run("a", "p", [_stage("baseline", 0, 10.0, gmacs=None)])])) is None


def test_stage_points_carry_the_speedup_interval_and_ties_from_the_report() -> None:
    fused = _stage("fuse_bn", 1, 9.8)
    fused.metrics.speedup_vs_previous = {"value": 1.02, "low": 0.97, "high": 1.08, "tie": True}
    exported = _stage("export_onnx", 2, 4.0)
    exported.metrics.speedup_vs_previous = {"value": 2.4, "low": 2.2, "high": 2.6, "tie": False}
    points = stage_points([_run("resnet18", "fuse_export", [_stage("baseline", 0, 10.0), fused, exported])])
    assert [(p.speedup_vs_previous, p.speedup_low, p.speedup_high, p.tie) for p in points[1:]] == [
        (1.02, 0.97, 1.08, True), (2.4, 2.2, 2.6, False)]  # the run's paired figures, not the p50 ratios
    bars = _decode(pass_speedups_png(points))
    assert bars.ndim == 3 and bars.shape[0] > 200
