"""Signals (issue 25, item 8): SIGTERM, what ``timeout`` and job schedulers send, ends a run as Ctrl-C
does: the report says ``interrupted``, the stage that was running is recorded interrupted (never
"skipped"), and the exit code is 143 (130 for Ctrl-C), also after a plugin that ignored them."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

import hostile_plugins
import plugins_for_tests
from optkit.config.pipeline import parse_pipeline
from optkit.host.facade import Host
from optkit.run.runner import run_pipeline
from test_hostile_concurrency import sleepy_pipeline, start_run, wait_for


@pytest.fixture(scope="module")
def host() -> Host:
    return Host.with_plugins(plugins_for_tests, hostile_plugins)


def run(host, tmp_path, passes: str, measure: str = "{warmup: 1, iters: 3}"):
    text = plugins_for_tests.TINY_PIPELINE.format(passes=passes).replace("{warmup: 1, iters: 3}", measure)
    return run_pipeline(parse_pipeline(text, host.get_pass), host, output=tmp_path / "run")


@pytest.mark.parametrize(("name", "seen"), [("SIGTERM", "SIGTERM"), ("SIGINT", "Ctrl-C")])
def test_a_signal_during_a_stage_records_it_interrupted(host, tmp_path, name, seen):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    report, run_dir = run(host, tmp_path, f"  - identity\n  - signals_itself: {{signal: {name}}}\n  - identity")
    assert report.status == "interrupted"
    assert [s.status for s in report.stages] == ["ok", "ok", "interrupted", "skipped"]
    assert report.stages[2].error == f"interrupted ({seen})"
    written = json.loads((run_dir / "report.json").read_text())
    assert written["status"] == "interrupted" and written["stages"][2]["status"] == "interrupted"
    assert written["timing"]["status"] == "interrupted"  # not "pending": the side-by-side timing never ran
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # the run's handlers are gone


def test_handlers_a_plugin_replaced_are_restored_after_its_stage(host, tmp_path):
    report, _ = run(host, tmp_path, "  - ignores_sigint\n  - signals_itself: {signal: SIGTERM}")
    assert report.status == "interrupted"
    assert [s.status for s in report.stages] == ["ok", "ok", "interrupted"]


def test_timing_status_says_interrupted_after_ctrl_c_in_a_pass(host, tmp_path):
    report, _ = run(host, tmp_path, "  - interrupts")
    assert report.status == "interrupted" and report.timing.status == "interrupted"


@pytest.mark.parametrize(("sent", "code", "seen"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_real_process_sent_a_signal_mid_stage_exits_with_its_code(tmp_path, sent, code, seen):
    pipeline = sleepy_pipeline(tmp_path, "p.yaml", "started", 300)
    pipeline.write_text(pipeline.read_text().replace("passes:\n", "passes:\n  - ignores_sigint\n"))
    process = start_run(tmp_path, str(pipeline), "-o", "out")
    wait_for(tmp_path / "started", process)
    time.sleep(0.2)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "interrupted"
    assert [s["status"] for s in report["stages"]] == ["ok", "ok", "interrupted"]
    assert report["stages"][2]["error"] == f"interrupted ({seen})"
    assert not (tmp_path / "out" / ".optkit-run.lock").exists()
