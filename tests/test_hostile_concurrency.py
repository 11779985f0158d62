"""Two runs on one folder (issue 25, item 1): the folder is owned by one process at a time, so neither
run loses or mixes the other's files, in either order, with or without ``--overwrite``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import plugins_for_tests
from optkit.errors import PipelineError
from optkit.run.lock import LOCK_NAME, RunFolderBusy, acquire_run_lock
from optkit.run.run_dirs import claim_run_dir

TESTS = Path(__file__).parent

SCRIPT = textwrap.dedent(
    f"""
    import importlib.metadata, sys
    sys.path.insert(0, {str(TESTS)!r})
    from test_hostile_runs import HOSTILE
    from test_cli import TEST_PASSES
    real = list(importlib.metadata.distributions())
    importlib.metadata.distributions = lambda: [*real, TEST_PASSES, HOSTILE]
    from optkit.cli import main
    sys.argv = ["optkit", "run", *sys.argv[1:]]
    main()
    """
)


def start_run(cwd: Path, *args: str) -> subprocess.Popen:
    """``optkit run ARGS`` in a real process, with the test and hostile passes installed."""
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sleepy_pipeline(tmp_path: Path, name: str, marker: str, seconds: float = 3.0, until: str = "") -> Path:
    path = tmp_path / name
    options = f"seconds: {seconds}, marker: {marker}" + (f", until: {until}" if until else "")
    path.write_text(plugins_for_tests.TINY_PIPELINE.format(passes=f"  - sleeps: {{{options}}}"))
    return path


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# --- the lock itself ---------------------------------------------------------------------------------


def test_a_held_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    first = acquire_run_lock(tmp_path)
    try:
        with pytest.raises(RunFolderBusy, match=rf"in use by optkit run PID {os.getpid()} on .* \(started 20\d\d-"):
            acquire_run_lock(tmp_path)
    finally:
        first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    acquire_run_lock(tmp_path).release()  # free again


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_held_by_a_run_is_refused_and_left_alone(tmp_path, overwrite):
    run_dir, lock = claim_run_dir(tmp_path / "run")
    (run_dir / "report.json").write_text('{"stages": []}')
    (run_dir / "model.pt").write_text("the running run's")
    try:
        with pytest.raises(RunFolderBusy, match=f"PID {os.getpid()}"):
            claim_run_dir(tmp_path / "run", overwrite=overwrite)
    finally:
        lock.release()
    assert (run_dir / "model.pt").read_text() == "the running run's"
    assert not (tmp_path / "run-2").exists()


def test_overwrite_of_a_finished_run_keeps_the_lock_until_released(tmp_path):
    run_dir, lock = claim_run_dir(tmp_path / "run")
    (run_dir / "report.json").write_text('{"stages": []}')
    lock.release()
    again, lock = claim_run_dir(tmp_path / "run", overwrite=True)
    assert again == run_dir and sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]
    lock.release()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path, caplog):
    from optkit.config.pipeline import parse_pipeline
    from optkit.host.facade import Host
    from optkit.run.runner import run_pipeline

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.json").write_text('{"stages": [], "status": "running"}')
    stale = {"pid": 999999999, "host": "elsewhere", "started": "2026-01-01T00:00:00Z"}
    (run_dir / LOCK_NAME).write_text(json.dumps(stale))
    test_host = Host.with_plugins(plugins_for_tests)
    report, where = run_pipeline(
        parse_pipeline(plugins_for_tests.TINY_PIPELINE.format(passes="  - identity"), test_host.get_pass), test_host,
        output=run_dir, overwrite=True,
    )
    assert report.status == "ok" and where == run_dir
    written = json.loads((run_dir / "report.json").read_text())
    assert written["lock"]["pid"] == os.getpid()
    assert written["lock"]["took_over"] == stale
    assert "took over the lock of optkit run PID 999999999 on elsewhere" in caplog.text
    assert not (run_dir / LOCK_NAME).exists()  # released when the run ended


def test_a_folder_holding_only_a_lock_file_is_a_run_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_NAME).write_text("")
    run_dir, lock = claim_run_dir(tmp_path / "run")
    assert run_dir == tmp_path / "run"
    lock.release()


def test_something_else_in_a_folder_is_still_refused(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(PipelineError, match="holds no optkit run"):
        claim_run_dir(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


# --- two real processes ------------------------------------------------------------------------------


def test_a_second_run_on_a_running_folder_is_refused_with_or_without_overwrite(tmp_path):
    first = start_run(tmp_path, str(sleepy_pipeline(tmp_path, "a.yaml", "a-started", 300, until="a-may-end")), "-o", "out")
    wait_for(tmp_path / "a-started", first)
    overwrite = start_run(tmp_path, str(sleepy_pipeline(tmp_path, "b.yaml", "b-started", 0)), "-o", "out", "--overwrite")
    plain = start_run(tmp_path, str(sleepy_pipeline(tmp_path, "c.yaml", "c-started", 0)), "-o", "out")
    for refused in (overwrite, plain):
        _, stderr = refused.communicate(timeout=300)
        assert refused.returncode == 2, stderr
        assert f"error: output out is in use by optkit run PID {first.pid} on " in stderr
        assert "(started 20" in stderr
    (tmp_path / "a-may-end").touch()
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "ok" and report["lock"]["pid"] == first.pid
    assert (tmp_path / "out" / "stages" / "01-sleeps" / "mine.txt").read_text() == f"{first.pid}\n"
    assert not (tmp_path / "b-started").exists() and not (tmp_path / "c-started").exists()
    assert not (tmp_path / "out-2").exists()


@pytest.mark.slow
def test_two_runs_started_at_once_never_mix_their_files(tmp_path):
    runs = [start_run(tmp_path, str(sleepy_pipeline(tmp_path, f"{n}.yaml", f"{n}-started", 1)), "-o", "out", "--overwrite")
            for n in ("a", "b")]
    outcomes = [(run.pid, run.returncode, run.communicate(timeout=300)[1]) for run in runs]
    outcomes = [(pid, run.returncode, stderr) for (pid, _, stderr), run in zip(outcomes, runs)]
    ok = [pid for pid, code, _ in outcomes if code == 0]
    assert len(ok) >= 1, outcomes
    for pid, code, stderr in outcomes:
        assert code in (0, 2), stderr
        if code == 2:
            assert "is in use by" in stderr, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    owner = report["lock"]["pid"]
    assert owner in ok
    assert (tmp_path / "out" / "stages" / "01-sleeps" / "mine.txt").read_text() == f"{owner}\n"
