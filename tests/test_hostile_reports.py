"""Hostile reports (issue 25, items 6 and 10): report.json files that are no regular file, too large,
malformed or from a future schema; and text optkit did not write kept out of report.md's markup."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest

from optkit.errors import PipelineError
from optkit.reporting.markdown import render_comparison_markdown, render_markdown
from optkit.reporting.runs import load_runs
from optkit.results import REPORT_MAX_BYTES, ComparedRun, ComparisonMeta, RunReport, StageResult

SCRIPT = "<script>alert(1)</script>"


def hostile_report() -> RunReport:
    return RunReport(
        environment={"device": "cpu <b>"},
        pipeline={"model": {"source": f"python:{SCRIPT}", "input_shape": [1, 3]}},
        stages=[StageResult("baseline", None, 0, "ok", details={"note": SCRIPT}),
                StageResult(f"x{SCRIPT}", "x", 1, "failed", error=f"<img src=x onerror=alert(1)>", artifacts=[f"stages/{SCRIPT}.txt"])],
        status="failed", error="<img src=x onerror=alert(1)>",
    )


def outside_code(markdown: str) -> str:
    """Markdown without its code spans (where HTML is shown as text, not rendered)."""
    return re.sub(r"`[^`\n]*`", "", markdown)


def test_report_md_escapes_what_optkit_did_not_write():
    text = outside_code(render_markdown(hostile_report()))
    assert "<script" not in text and "<img" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;img src=x onerror=alert(1)&gt;" in text


def test_the_comparison_markdown_escapes_labels_and_errors():
    run = ComparedRun(hostile_report(), model=SCRIPT, pipeline="<i>p</i>")
    text = outside_code(render_comparison_markdown([run], meta=ComparisonMeta(title=f"sweep {SCRIPT}", command="optkit sweep s.yaml")))
    assert "<script" not in text and "<img" not in text and "<i>" not in text
    assert "&lt;script&gt;" in text


# --- reading report.json ------------------------------------------------------------------------------


def good_run(folder: Path, status: str = "ok") -> Path:
    folder.mkdir(parents=True)
    report = RunReport({"device": "cpu"}, {"model": {"source": "torchvision:resnet18"}},
                       [StageResult("baseline", None, 0, status, metrics={"params": 10})], status=status)
    (folder / "report.json").write_text(json.dumps(report.to_dict()))
    return folder


def test_a_report_json_that_is_a_link_to_dev_zero_is_refused_at_once(tmp_path):
    (tmp_path / "run").mkdir()
    os.symlink("/dev/zero", tmp_path / "run" / "report.json")
    with pytest.raises(PipelineError, match=rf"^{tmp_path}/run/report.json: cannot read report: not a regular file \(a character device\)"):
        load_runs([tmp_path / "run"])


def test_a_report_json_that_is_a_fifo_does_not_block(tmp_path):
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / "report.json")
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            load_runs([tmp_path / "run"])
            outcome.append(None)
        except PipelineError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert outcome, "reading a FIFO blocked"
    assert "not a regular file (a FIFO)" in str(outcome[0])


def test_a_report_json_over_the_size_limit_is_refused_unread(tmp_path):
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / "report.json", "wb") as f:
        f.truncate(REPORT_MAX_BYTES + 1)  # sparse: nothing to read would be cheap, but it must not be read at all
    with pytest.raises(PipelineError, match=rf"report.json: cannot read report: {REPORT_MAX_BYTES + 1:,} bytes, more than the limit of 64 MiB"):
        load_runs([tmp_path / "run"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(stages="oops"), "report.json does not fit the report schema at stages: Input should be a valid list"),
        (lambda r: r["stages"][0].update(metrics="fast"), "report.json does not fit the report schema at stages.0.metrics: "),
        (lambda r: r["stages"][0].update(artifacts=[1]), "report.json does not fit the report schema at stages.0.artifacts.0: "),
        (lambda r: r.update(environment=[]), "report.json does not fit the report schema at environment: "),
        (lambda r: r.update(schema=999), "report.json has schema 999, written by a newer optkit .*upgrade optkit"),
    ],
)
def test_malformed_reports_name_the_file_and_the_field(tmp_path, change, message):
    folder = good_run(tmp_path / "run")
    report = json.loads((folder / "report.json").read_text())
    change(report)
    (folder / "report.json").write_text(json.dumps(report))
    with pytest.raises(PipelineError, match=rf"^{folder}/report.json: {message}"):
        load_runs([folder])


def test_one_bad_report_is_skipped_with_a_warning_not_the_whole_comparison(tmp_path, cli):
    good = good_run(tmp_path / "good")
    bad = good_run(tmp_path / "bad")
    (bad / "report.json").write_text('{"stages": "oops"}')
    result = cli("report", good, bad, "-o", tmp_path / "cmp")
    assert result.exit_code == 0, result.stderr
    assert f"warning: skipped {bad}/report.json: report.json does not fit the report schema at stages: " in result.stderr
    assert result.stdout.startswith("1 runs →")
    result = cli("report", bad, "-o", tmp_path / "cmp2")
    assert result.exit_code == 2 and f"error: {bad}/report.json: report.json does not fit the report schema at stages" in result.stderr


def test_a_malformed_run_inside_a_comparison_report_is_named(tmp_path):
    comparison = {"kind": "optkit-comparison", "runs": [{"report": {"stages": [{"metrics": "fast"}]}}]}
    (tmp_path / "report.json").write_text(json.dumps(comparison))
    with pytest.raises(PipelineError, match=rf"^{tmp_path}/report.json: report.json does not fit the comparison schema at runs.0.report.stages.0"):
        load_runs([tmp_path / "report.json"])
    (tmp_path / "report.json").write_text(json.dumps({"kind": "optkit-comparison", "runs": "oops"}))
    with pytest.raises(PipelineError, match=rf"^{tmp_path}/report.json: report.json does not fit the comparison schema at runs: "):
        load_runs([tmp_path / "report.json"])
