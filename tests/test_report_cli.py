"""`optkit report RUN_DIR...`: several runs side by side as Markdown, a self-contained HTML page and plots."""

from __future__ import annotations

import base64
import io
import json
import re
import statistics
from pathlib import Path

import matplotlib.image as matplotlib_image
import pytest
import torch
from torch import nn

from optkit import Pass, hookimpl
from optkit.config.pipeline import parse_pipeline
from optkit.host.facade import Host
from optkit.reporting.tables import final_speedup, speedup_table
from optkit.results import ComparedRun, RunReport, StageResult
from optkit.run.runner import run_pipeline


class Halve(Pass):
    """Keep half the output channels of a lone Conv2d (a smaller, different model: drift is expected)."""

    name = "halve_channels"
    summary = "Keep the first half of a Conv2d's output channels."

    def apply(self, model: nn.Module, ctx: object) -> nn.Module:
        keep = model.out_channels // 2
        smaller = nn.Conv2d(model.in_channels, keep, model.kernel_size)
        with torch.no_grad():
            smaller.weight.copy_(model.weight[:keep])
            smaller.bias.copy_(model.bias[:keep])
        return smaller


class _TestPasses:
    @hookimpl
    def optkit_register_passes(self, register):
        register(Halve)


PIPELINE = """
model:
  source: python:torch.nn:Conv2d
  kwargs: {{in_channels: 3, out_channels: {channels}, kernel_size: 3}}
  input_shape: [1, 3, 64, 64]
device: cpu
measure: {{warmup: 0, iters: 2}}
passes: {passes}
save_model: false
"""


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A Conv2d 3→8 through ``halve_channels``, and a Conv2d 3→16 with no passes."""
    host = Host.with_plugins(_TestPasses())
    folder = tmp_path_factory.mktemp("runs")
    run_dirs = []
    for name, channels, passes in (("halved", 8, "[halve_channels]"), ("plain", 16, "[]")):
        pipeline = parse_pipeline(PIPELINE.format(channels=channels, passes=passes), host.get_pass)
        report, run_dir = run_pipeline(pipeline, host, output=folder / name)
        assert report.status == "ok", report.error
        run_dirs.append(run_dir)
    return run_dirs


@pytest.fixture(scope="module")
def rendered(two_runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``optkit report`` of the two runs (rendered once: plots take a few seconds)."""
    from click.testing import CliRunner

    from optkit.cli.commands import cli as command

    out = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(command, ["report", *map(str, two_runs), "--output", str(out), "--title", "two convs"])
    assert result.exit_code == 0, result.output
    assert f"2 runs → {out / 'report.md'}, {out / 'report.html'}" in result.output
    return out


def _table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    """Rows of the "Every stage" table whose first cell is ``first_cell``."""
    section = markdown.split("## Every stage", 1)[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith(f"| {first_cell} |")]


def test_report_compares_runs_in_one_table(two_runs: list[Path], rendered: Path) -> None:
    markdown = (rendered / "report.md").read_text()
    assert markdown.startswith("# two convs\n")
    assert "| model | pipeline | stage | status | params | GMACs | p50 ms | speed-up |" in markdown
    assert "device **cpu**" in markdown and "torch " + torch.__version__ in markdown  # the environment header
    rows = _table_rows(markdown, "Conv2d")
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("halve_channels", "baseline", "ok"), ("halve_channels", "halve_channels", "ok"), ("baseline", "baseline", "ok"),
    ]
    # Conv2d(3→8, 3×3) has 8·27 + 8 = 224 parameters; halved 4·27 + 4 = 112; 3→16: 448.
    assert [r[4] for r in rows] == ["224", "112", "448"]
    # MACs on a 64×64 input: 62·62 output positions × out_channels × 27.
    halved = RunReport.load(two_runs[0])
    assert [s.metrics.macs for s in halved.stages] == [62 * 62 * 8 * 27, 62 * 62 * 4 * 27]
    p50 = [s.metrics.latency_ms.p50 for s in halved.stages]
    # Timed side by side: the speed-up is the median of the per-round ratios, with its interval.
    base, halved_times = (s.metrics.latency_ms.samples for s in halved.stages)
    figure = halved.stages[1].metrics.speedup
    torch.testing.assert_close(figure.value, statistics.median(b / h for b, h in zip(base, halved_times)), rtol=1e-12, atol=0)
    bounds = f"[{figure.low:.2f}–{figure.high:.2f}]"
    assert rows[1][7] == (f"tie {bounds}" if figure.tie else f"{figure.value:.2f}× {bounds}")
    assert rows[0][6] == f"{p50[0]:.2f}"


def test_html_is_self_contained_with_both_plots(rendered: Path) -> None:
    page = (rendered / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 2
    for data in images:
        png = base64.b64decode(data)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert matplotlib_image.imread(io.BytesIO(png), format="png").shape[0] > 100
    assert "src='plots/" not in page and "<link" not in page  # nothing outside the page
    assert sorted(p.name for p in (rendered / "plots").iterdir()) == ["latency_vs_gmacs.png", "speedup_per_pass.png"]
    assert "<td>halve_channels</td>" in page


def test_a_comparison_report_renders_again_unchanged(rendered: Path, cli, tmp_path: Path) -> None:
    combined = json.loads((rendered / "report.json").read_text())
    assert combined["kind"] == "optkit-comparison" and len(combined["runs"]) == 2
    assert cli("report", rendered, "-o", tmp_path).exit_code == 0
    first, second = ((folder / "report.md").read_text() for folder in (rendered, tmp_path))
    assert _table_rows(first, "Conv2d") == _table_rows(second, "Conv2d")


def test_missing_run_is_named(cli, tmp_path: Path) -> None:
    result = cli("report", tmp_path / "nowhere", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert f"{tmp_path / 'nowhere'}: no report.json here" in result.output
    assert not (tmp_path / "out").exists()


def _report(p50s: list[float], statuses: list[str] | None = None, status: str = "ok") -> RunReport:
    """Stages with these p50s; each after the baseline with a speed-up of baseline/p50 and a ±10% interval."""
    statuses = statuses or ["ok"] * len(p50s)
    stages = [StageResult(f"s{i}", None, i, status=st, metrics={"latency_ms": {"p50": p}})
              for i, (p, st) in enumerate(zip(p50s, statuses))]
    for stage in stages[1:]:
        ratio = p50s[0] / stage.metrics.latency_ms.p50
        stage.metrics.speedup = {"value": ratio, "low": 0.9 * ratio, "high": 1.1 * ratio, "tie": 0.9 * ratio <= 1 <= 1.1 * ratio}
    return RunReport({"device": "cpu"}, {"model": {"source": "torchvision:m"}}, stages, status=status)


def test_final_speedup_is_baseline_over_last_ok_stage() -> None:
    torch.testing.assert_close(final_speedup(_report([10.0, 8.0, 4.0])), 2.5, rtol=1e-12, atol=0)
    torch.testing.assert_close(final_speedup(_report([10.0, 5.0, 1.0], ["ok", "ok", "skipped"])), 2.0, rtol=1e-12, atol=0)
    assert final_speedup(_report([10.0])) is None


def test_speedup_table_names_the_failed_stage() -> None:
    runs = [ComparedRun(_report([10.0, 4.0]), pipeline="fast"),
            ComparedRun(_report([10.0, 1.0], ["ok", "failed"], status="failed"), pipeline="broken")]
    header, rows = speedup_table(runs)
    assert header == ["model", "fast", "broken"]
    assert rows == [["m", "2.50× [2.25–2.75]", "failed at s1"]]


def test_speedup_table_shows_a_tie_as_a_tie() -> None:
    header, rows = speedup_table([ComparedRun(_report([10.0, 10.5]), pipeline="same")])
    assert rows == [["m", "tie [0.86–1.05]"]]
