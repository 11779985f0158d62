"""report.json (the contract in DESIGN.md), report.md and the stage table rows."""

from __future__ import annotations

import json
import re

import plugins_for_tests
import pytest

from optkit.config.pipeline import load_pipeline
from optkit.host.facade import Host
from optkit.reporting.markdown import render_markdown
from optkit.reporting.tables import COLUMNS, DATA_COLUMNS, format_count, stage_rows
from optkit.results import RunReport, StageResult
from optkit.run.runner import run_pipeline
from optkit.testing import check_report_contract


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One run with an ok, a failed and a skipped stage, read back from disk."""
    host = Host.with_plugins(plugins_for_tests)
    folder = tmp_path_factory.mktemp("report")
    path = folder / "pipeline.yaml"
    path.write_text(plugins_for_tests.TINY_PIPELINE.format(passes="  - scale: {factor: 2}\n  - raises\n  - identity"))
    report, run_dir = run_pipeline(load_pipeline(path, host.get_pass), host, output=folder / "run")
    return report, json.loads((run_dir / "report.json").read_text()), run_dir


def test_report_json_has_every_field_of_the_contract(finished_run):
    _, data, _ = finished_run

    check_report_contract(data)
    assert data["schema"] == 2 and data["status"] == "failed"
    assert data["optkit_version"] == "0.1.0"
    env = data["environment"]
    assert env["device"] == "cpu" and env["python"].count(".") == 2 and isinstance(env["threads"], int)
    assert env["torch"].startswith("2.") and env["torchvision"]
    assert data["pipeline"]["path"].endswith("pipeline.yaml")
    assert data["pipeline"]["model"] == {**data["pipeline"]["model"], "source": "python:plugins_for_tests:tiny_net",
                                         "input_shape": [2, 3, 64, 64]}
    stages = data["stages"]
    assert [(s["name"], s["pass"], s["status"]) for s in stages] == [
        ("baseline", None, "ok"), ("scale", "scale", "ok"), ("raises", "raises", "failed"), ("identity", "identity", "skipped")
    ]
    for stage in stages[:2]:
        m = stage["metrics"]
        assert set(m) >= {"params", "nonzero_params", "macs", "gflops", "size_bytes", "latency_ms", "drift"}
        assert m["gflops"] == pytest.approx(2 * m["macs"] / 1e9, rel=1e-12)
        assert set(m["latency_ms"]) >= {"p50", "p90", "mean", "std", "n", "warmup", "runtime"}
        assert (m["latency_ms"]["n"], m["latency_ms"]["warmup"], m["latency_ms"]["runtime"]) == (3, 1, "torch")
        assert 0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p90"]
        assert set(m["drift"]) >= {"max_abs", "cosine", "top1_agreement"}
        assert stage["error"] is None and stage["duration_s"] >= 0
    assert stages[2]["error"] == "stage 2 (raises) failed: RuntimeError: boom from the raises pass"
    assert stages[3]["metrics"] == {} and stages[3]["error"] is None


def test_contract_check_names_what_is_missing(finished_run):
    _, data, _ = finished_run
    broken = json.loads(json.dumps(data))
    del broken["stages"][1]["metrics"]["latency_ms"]["p90"]
    with pytest.raises(AssertionError, match="report.json: stage 'scale' latency_ms lacks p90"):
        check_report_contract(broken)
    del broken["environment"]["torch"]
    with pytest.raises(AssertionError, match="report.json: environment lacks torch"):
        check_report_contract(broken)


def test_report_round_trips_through_json(finished_run):
    report, data, run_dir = finished_run
    loaded = RunReport.load(run_dir)
    assert loaded.to_dict() == data
    assert loaded.stages[1] == StageResult.from_dict(data["stages"][1])


def test_markdown_report_has_the_table_the_error_and_the_details(finished_run):
    _, _, run_dir = finished_run
    text = (run_dir / "report.md").read_text()

    assert text.startswith("# optkit report: python:plugins_for_tests:tiny_net\n")
    assert "Status: **failed** · input [2, 3, 64, 64]" in text
    without_data = [c for c in COLUMNS if c not in DATA_COLUMNS]  # no data: section, no accuracy columns
    assert "| " + " | ".join(c.replace("|", "\\|") for c in without_data) + " |" in text  # max|Δ| escaped
    assert "accuracy" not in text
    assert "**Error:** stage 2 (raises) failed: RuntimeError: boom from the raises pass" in text
    assert "## 1. scale\n\n- factor: 2.0" in text
    assert "- artifact: `stages/02-raises/traceback.txt`" in text


def synthetic_report(with_intervals: bool = True) -> RunReport:
    def metrics(params, nonzero, macs, p50, max_abs=None, top1=None, agreement=None, speedup=None):
        m = {"params": params, "nonzero_params": nonzero, "sparsity": 1 - nonzero / params, "gmacs": macs / 1e9,
             "gflops": 2 * macs / 1e9, "size_bytes": 4 * params, "latency_ms": {"p50": p50},
             "accuracy": {"top1": top1, "top5": 1.0, "n": 360}, "agreement": {"top1": agreement, "n": 360}}
        if max_abs is not None:
            m["drift"] = {"max_abs": max_abs, "cosine": 0.999, "top1_agreement": 0.75}
        if speedup is not None and with_intervals:
            m["speedup"] = speedup
        return m

    return RunReport(
        environment={"device": "cpu", "torch": "2.x", "threads": 2, "python": "3.11.7"},
        pipeline={"model": {"source": "torchvision:resnet18", "input_shape": [1, 3, 224, 224]}},
        stages=[
            StageResult("baseline", None, 0, "ok", 0.0, metrics(11_689_512, 11_689_512, 1_814_073_344, 40.0, 0.0, 355 / 360, 1.0)),
            StageResult("prune_l1", "prune_l1", 1, "ok", 1.5, metrics(5_844_756, 5_844_756, 907_036_672, 20.0, 0.25, 0.9, 0.875,
                        {"value": 2.0, "low": 1.914, "high": 2.087, "tie": False})),
            StageResult("fuse_bn", "fuse_bn", 2, "ok", 0.5, metrics(5_844_756, 5_844_756, 907_036_672, 21.0, 0.25, 0.9, 0.875,
                        {"value": 1.9, "low": 0.97, "high": 2.3, "tie": True})),
            StageResult("tta", "tta", 3, "skipped"),
        ],
        status="failed",
        timing={"compare": "interleaved", "iters": 50, "confidence": 0.95,
                "noise": {"cv": 0.23, "max_cv": 0.1, "noisy": True, "why": "its timings vary by 23% (robust CV, above 10%)"}},
    )


def test_stage_rows_compute_deltas_against_the_baseline():
    base, pruned, fused, skipped = stage_rows(synthetic_report())

    assert (base["Δparams"], base["speed-up"], base["params"]) == ("", "", "11.69M")
    assert pruned["Δparams"] == "-50.0%"
    assert pruned["speed-up"] == "2.00× [1.91–2.09]"
    assert fused["speed-up"] == "tie [0.97–2.30]"  # the interval includes 1×: not shown as 1.90×
    assert (pruned["GMACs"], pruned["GFLOPs"]) == ("0.907", "1.814")
    assert (pruned["max|Δ|"], pruned["cosine"], pruned["top-1"]) == ("2.50e-01", "0.999000", "75%")
    assert (pruned["size MB"], pruned["time s"]) == ("23.38", "1.50")
    assert (base["accuracy"], base["agreement"]) == ("98.61%", "100.00%")
    assert (pruned["accuracy"], pruned["agreement"]) == ("90.00%", "87.50%")
    assert (skipped["accuracy"], skipped["agreement"]) == ("–", "–")
    assert (skipped["status"], skipped["params"], skipped["time s"]) == ("skipped", "–", "–")


def test_a_bound_next_to_one_keeps_the_side_it_is_on():
    from optkit.reporting.tables import format_speedup

    assert format_speedup({"value": 1.05, "low": 0.998, "high": 1.12, "tie": True}) == "tie [0.998–1.12]"
    assert format_speedup({"value": 1.05, "low": 1.003, "high": 1.12, "tie": False}) == "1.05× [1.003–1.12]"
    assert format_speedup({"value": 2.0, "low": 2.0, "high": 2.0, "tie": False}) == "2.00× [2.00–2.00]"


def test_a_report_without_intervals_says_so():
    """Reports written before speed-ups had intervals show the p50 ratio, marked as having none."""
    _, pruned, fused, _ = stage_rows(synthetic_report(with_intervals=False))
    assert (pruned["speed-up"], fused["speed-up"]) == ("2.00× (no interval)", "1.90× (no interval)")


def test_markdown_of_a_synthetic_report_lists_every_stage():
    text = render_markdown(synthetic_report())
    rows = [line for line in text.splitlines() if line.startswith("| ") and "stage" not in line]
    assert [row.split(" | ")[1] for row in rows] == ["baseline", "prune_l1", "fuse_bn", "tta"]
    assert "Latency: the baseline and every stage timed side by side, round-robin (50 rounds)" in text
    assert "'tie' = the interval includes 1×" in text
    assert "Warning: the machine was busy before timing: a fixed workload: its timings vary by 23% (robust CV, above 10%)" in text


@pytest.mark.parametrize(
    ("count", "text"),
    [(None, "–"), (0, "0"), (999, "999"), (1_000, "1.00k"), (25_557_032, "25.56M"), (4_100_000_000, "4.10G"), (-2_500, "-2.50k")],
)
def test_format_count(count, text):
    assert format_count(count) == text


def test_console_table_is_whole_in_a_pipe_and_trimmed_in_a_narrow_terminal():
    from io import StringIO

    from rich.console import Console

    from optkit.reporting.console import print_report

    piped = StringIO()
    print_report(synthetic_report(), Console(file=piped, width=80), "runs/x")
    header = next(line for line in piped.getvalue().splitlines() if "stage" in line)
    assert all(column in header for column in COLUMNS)  # nothing squeezed into "…"
    assert "Accuracy is top-1 on data.eval" in piped.getvalue()

    terminal = StringIO()
    print_report(synthetic_report(), Console(file=terminal, width=80, force_terminal=True, color_system=None), "runs/x")
    lines = terminal.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "| prune_l1 |" not in lines and any("prune_l1" in line and "2.00× [1.91–2.09]" in line for line in lines)
    assert any("fuse_bn" in line and "tie [0.97–2.30]" in line for line in lines)
    assert "Warning: the machine was busy" in terminal.getvalue()
    assert "(terminal too narrow: " in terminal.getvalue() and "report.md has every column)" in " ".join(lines)


def test_markdown_table_rows_have_as_many_cells_as_columns():
    """Column titles such as ``max|Δ|`` must not split cells: every row has len(COLUMNS) cells."""
    table = [line for line in render_markdown(synthetic_report()).splitlines() if line.startswith("|")]
    cells = [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in table]
    assert len(table) == 2 + len(synthetic_report().stages)
    assert {len(row) for row in cells} == {len(COLUMNS)}


def test_markdown_gives_drift_per_output_for_stages_with_several():
    """A YOLO-like stage: the prediction's box and score groups and a feature map, each with its own figures."""
    drift = {"comparable": True, "max_abs": 2.0, "reference_max_abs": 480.0, "cosine": 0.99, "outputs": [
        {"name": "output_0", "shape": [1, 84, 8400], "max_abs": 2.0, "reference_max_abs": 480.0, "cosine": 0.99, "groups": [
            {"group": "boxes", "channels": [0, 4], "max_abs": 2.0, "reference_max_abs": 480.0, "cosine": 0.999},
            {"group": "scores", "channels": [4, 84], "max_abs": 0.25, "reference_max_abs": 0.5, "cosine": 0.75}]},
        {"name": "output_1", "shape": [1, 64, 80, 80], "max_abs": 1e-3, "reference_max_abs": 9.0, "cosine": 1.0}]}
    single = {"comparable": True, "max_abs": 0.1, "reference_max_abs": 1.0, "cosine": 1.0,
              "outputs": [{"name": "output", "shape": [1, 10], "max_abs": 0.1, "reference_max_abs": 1.0, "cosine": 1.0}]}
    report = RunReport(
        pipeline={"model": {"source": "yolo"}}, environment={},
        stages=[StageResult("baseline", None, 0, "ok", 0.0, {"drift": single}),
                StageResult("fuse_bn", "fuse_bn", 1, "ok", 0.1, {"drift": drift})],
        status="ok",
    )
    text = render_markdown(report)
    section = text.split("## Drift per output", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| 1 ")]
    assert [(r[2], r[3], r[5].rstrip(" |")) for r in rows] == [
        ("output_0 (boxes)", "2.00e+00", "0.999000"), ("output_0 (scores)", "2.50e-01", "0.750000"), ("output_1", "1.00e-03", "1.000000")]
    assert "| 0 " not in section  # one output: the stage table says it all
    single_only = RunReport(pipeline={"model": {}}, environment={}, stages=[StageResult("baseline", None, 0, "ok", 0.0, {"drift": single})], status="ok")
    assert "Drift per output" not in render_markdown(single_only)
