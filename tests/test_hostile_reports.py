"""Hostile reports (issue 25, items 6 and 10): report.json files that are no regular file, too large,
malformed or from a future schema; and text optkit did not write kept out of report.md's markup."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from optkit.reporting import load_runs, render_markdown
from optkit.reporting.markdown import render_comparison_markdown
from optkit.reporting.runs import ComparedRun
from optkit.results import RunReport, StageResult

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
    text = outside_code(render_comparison_markdown([run], meta={"title": f"sweep {SCRIPT}", "command": "optkit sweep s.yaml"}))
    assert "<script" not in text and "<img" not in text and "<i>" not in text
    assert "&lt;script&gt;" in text
