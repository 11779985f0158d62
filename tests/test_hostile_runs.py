"""Runs against hostile outputs and misbehaving plugins: a one-line error, the right exit code,
and nothing of an earlier stage lost (issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import hostile_plugins
import plugins_for_tests
import pytest
import torch
from fake_distributions import FakeDistribution, install_fake_distributions
from test_cli import TEST_PASSES

from optkit.config.pipeline import parse_pipeline
from optkit.errors import PipelineError
from optkit.host.facade import Host
from optkit.measure.latency import configure_timing, flush_denormal_enabled
from optkit.run.run_dirs import MIN_FREE_BYTES, prepare_run_dir
from optkit.run.runner import run_pipeline

HOSTILE = FakeDistribution("optkit-hostile", "0.1", {"hostile": "hostile_plugins"})
TESTS = Path(__file__).parent


@pytest.fixture
def installed(monkeypatch, tmp_path):
    """The test passes and the hostile plugins installed through entry points; runs go under tmp_path."""
    install_fake_distributions(monkeypatch, TEST_PASSES, HOSTILE)
    monkeypatch.chdir(tmp_path)
    yield
    hostile_plugins.restore_writes()


@pytest.fixture(scope="module")
def host() -> Host:
    return Host.with_plugins(plugins_for_tests, hostile_plugins)


def write(tmp_path: Path, passes: str, **replace: str) -> Path:
    text = plugins_for_tests.TINY_PIPELINE.format(passes=passes)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def run(host: Host, tmp_path: Path, passes: str, **kwargs):
    text = plugins_for_tests.TINY_PIPELINE.format(passes=passes)
    return run_pipeline(parse_pipeline(text, host.get_pass), host, output=tmp_path / "run", **kwargs)


def one_line_error(result) -> str:
    """The error a person reads: one line, no traceback, no escape sequences."""
    assert "Traceback" not in result.stderr and "\x1b" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- the output folder ------------------------------------------------------------------------------


def test_an_output_under_a_file_is_a_one_line_error(installed, cli, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = cli("run", write(tmp_path, "  - identity"), "-o", "a-file/run")
    assert result.exit_code == 2
    assert one_line_error(result) == (
        "error: output a-file/run: cannot write there (Not a directory); choose another --output"
    )
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_an_output_name_too_long_is_a_one_line_error(installed, cli, tmp_path):
    name = "x" * 300
    result = cli("run", write(tmp_path, "  - identity"), "-o", name)
    assert result.exit_code == 2
    assert one_line_error(result) == (
        f"error: output {name[:60]}…{name[-40:]}: cannot write there (File name too long); choose another --output"
    )


def test_an_output_on_a_read_only_filesystem_is_refused_before_anything_runs(installed, cli, tmp_path, monkeypatch):
    monkeypatch.setattr("optkit.run.run_dirs.tempfile.mkstemp", hostile_plugins._read_only)
    result = cli("run", write(tmp_path, "  - identity"), "-o", "runs/ro")
    assert result.exit_code == 2
    assert one_line_error(result) == (
        "error: output runs/ro: cannot write there (Read-only file system); choose another --output"
    )
    assert not (tmp_path / "runs").exists()  # the folders made for the check are gone again


def test_too_little_disk_space_is_refused_and_an_earlier_run_is_kept(installed, cli, tmp_path, monkeypatch):
    assert cli("run", write(tmp_path, "  - writes_artifact"), "-o", "out").exit_code == 0
    monkeypatch.setattr("optkit.run.run_dirs.shutil.disk_usage", lambda path: _Usage(5_000_000))

    for extra in ([], ["--overwrite"]):
        result = cli("run", write(tmp_path, "  - identity"), "-o", "out", *extra)
        assert result.exit_code == 2
        error = one_line_error(result)
        assert error.startswith("error: output out") and ": 5 MB free on its filesystem, and the run needs about " in error
    assert (tmp_path / "out/stages/01-writes_artifact/note.txt").is_file()  # --overwrite removed nothing
    assert not (tmp_path / "out-2").exists()


class _Usage:
    def __init__(self, free: int) -> None:
        self.total, self.used, self.free = free, 0, free


def test_the_space_needed_counts_the_model_twice(tmp_path, monkeypatch):
    monkeypatch.setattr("optkit.run.run_dirs.shutil.disk_usage", lambda path: _Usage(MIN_FREE_BYTES + 999))
    prepare_run_dir(tmp_path / "fits", need_bytes=999)
    with pytest.raises(PipelineError, match="MB free on its filesystem"):
        prepare_run_dir(tmp_path / "does-not-fit", need_bytes=1000)
    assert not (tmp_path / "does-not-fit").exists()


def test_a_folder_turning_read_only_mid_run_fails_the_run_and_keeps_earlier_stages(installed, cli, tmp_path):
    result = cli("run", write(tmp_path, "  - writes_artifact\n  - goes_read_only\n  - identity"), "-o", "out")

    assert result.exit_code == 1
    assert one_line_error(result) == (
        "error: cannot write into the run folder out (Read-only file system); the run stopped there"
    )
    report = json.loads((tmp_path / "out/report.json").read_text())  # rewritten in place
    assert report["status"] == "failed" and report["error"] == one_line_error(result).removeprefix("error: ")
    assert [s["status"] for s in report["stages"]] == ["ok", "ok", "ok", "skipped"]
    assert (tmp_path / "out/stages/01-writes_artifact/note.txt").read_text() == "written by writes_artifact\n"


def test_when_nothing_can_be_written_the_error_says_the_report_on_disk_is_older(installed, cli, tmp_path):
    passes = "  - writes_artifact\n  - goes_read_only: {in_place: false}\n  - identity"
    result = cli("run", write(tmp_path, passes), "-o", "out", "--json")

    assert result.exit_code == 1
    assert one_line_error(result).endswith("the run stopped there; report.json on disk is from an earlier stage")
    printed = json.loads(result.stdout)  # the whole report still reaches the person
    assert [s["status"] for s in printed["stages"]] == ["ok", "ok", "ok", "skipped"]
    on_disk = json.loads((tmp_path / "out/report.json").read_text())
    assert on_disk["status"] == "running" and [s["status"] for s in on_disk["stages"]] == ["ok", "ok", "skipped", "skipped"]


# --- artifacts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/tmp/optkit-escaped.txt", "../escaped.txt", "../../../escaped.txt", ""])
def test_artifact_path_refuses_names_outside_the_stage_folder(host, tmp_path, path):
    report, run_dir = run(host, tmp_path, f"  - identity\n  - writes_artifact_at: {{path: {json.dumps(path)}}}")

    assert report.status == "failed"
    assert report.stages[2].error == (
        f"stage 2 (writes_artifact_at) failed: ValueError: artifact_path({path!r}): give a file name relative to "
        "the stage folder, without '..'"
    )
    assert json.loads((run_dir / "report.json").read_text())["status"] == "failed"
    assert not list(tmp_path.rglob("escaped.txt")) and not Path("/tmp/optkit-escaped.txt").exists()
    assert report.stages[1].status == "ok"


def test_artifact_path_makes_subfolders(host, tmp_path):
    report, run_dir = run(host, tmp_path, "  - writes_artifact_at: {path: onnx/parts/model.txt}")
    assert report.status == "ok"
    assert report.stages[1].artifacts == ["stages/01-writes_artifact_at/onnx/parts/model.txt"]
    assert (run_dir / report.stages[1].artifacts[0]).read_text() == "written\n"


def test_an_artifact_listed_outside_the_run_folder_fails_the_stage_not_the_runner(host, tmp_path):
    report, run_dir = run(host, tmp_path, "  - identity\n  - lists_outside: {path: /etc/passwd}")

    assert report.status == "failed"
    assert report.stages[2].error == (
        "stage 2 (lists_outside) failed: artifact /etc/passwd is outside the stage folder stages/02-lists_outside; "
        "write artifacts with ctx.artifact_path(name)"
    )
    assert report.stages[2].artifacts == ["stages/02-lists_outside/traceback.txt"]
    assert json.loads((run_dir / "report.json").read_text())["status"] == "failed"


# --- failures: traceback.txt, escape sequences, source plugins, observers ---------------------------------


@pytest.mark.parametrize(
    ("passes", "failed"),
    [("  - refuses_politely", 1), ("  - drifts", 1), ("  - returns_nothing", 1), ("  - colored", 1), ("  - raises", 1)],
)
def test_every_failed_stage_leaves_a_traceback(host, tmp_path, passes, failed):
    report, run_dir = run(host, tmp_path, passes)
    stage = report.stages[failed]
    assert stage.status == "failed"
    assert f"stages/{failed:02d}-{stage.name}/traceback.txt" in stage.artifacts
    assert "Traceback (most recent call last)" in (run_dir / f"stages/{failed:02d}-{stage.name}/traceback.txt").read_text()


def test_errors_lose_ansi_escapes_but_keep_their_reason(installed, cli, tmp_path):
    result = cli("run", write(tmp_path, "  - identity\n  - colored"), "-o", "out")

    assert result.exit_code == 1
    assert "\x1b" not in result.output
    assert "stage 2 (colored) failed: RuntimeError: shape mismatch in Graph" in " ".join(result.stderr.split())
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["error"] == "stage 2 (colored) failed: RuntimeError: shape mismatch in Graph"


def test_a_source_loader_that_raises_is_a_plugin_bug_naming_the_plugin(installed, cli, tmp_path):
    path = write(tmp_path, "  - identity", **{"python:plugins_for_tests:tiny_net": "boom:anything"})
    result = cli("run", path, "-o", "out")

    assert result.exit_code == 1  # not the user's input: a bug in the plugin (see optkit.errors)
    assert one_line_error(result) == (
        f"error: model.source (boom:anything): the 'boom' source loader of plugin 'hostile' (optkit-hostile 0.1) "
        f"raised RuntimeError: {hostile_plugins.SOURCE_ERROR} (a bug in that plugin: for input it refuses, "
        f"plugin code raises optkit.errors.PipelineError)"
    )
    assert not (tmp_path / "out").exists()  # nothing was run

    debug = cli("--debug", "run", path, "-o", "out")
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.stderr and "load_boom" in debug.stderr


def test_observers_that_raise_cannot_stop_a_run_or_the_other_observers(tmp_path, caplog):
    recorder = plugins_for_tests.StageRecorder()
    host = Host.with_plugins(plugins_for_tests, recorder, hostile_plugins.RaisingObserver())
    report, run_dir = run(host, tmp_path, "  - identity")

    assert report.status == "ok" and json.loads((run_dir / "report.json").read_text())["status"] == "ok"
    assert [c[0] for c in recorder.calls] == ["started", "finished", "started", "finished"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("raised in optkit_stage_finished and was skipped: ValueError: observer broke on finish" in w for w in warnings)


def test_a_model_that_cannot_be_saved_fails_the_run_after_every_stage_is_kept(host, tmp_path):
    report, run_dir = run(host, tmp_path, "  - identity\n  - unpicklable")

    assert [s.status for s in report.stages] == ["ok", "ok", "ok"]
    assert report.status == "failed"
    assert report.error.startswith("saving the final model as model.pt failed: ")
    assert report.error.endswith("set save_model: false in the pipeline file to skip it")
    assert json.loads((run_dir / "report.json").read_text())["status"] == "failed"
    assert not (run_dir / "model.pt").exists() and not (run_dir / "model.pt.tmp").exists()


def test_an_input_batch_that_cannot_be_allocated_is_a_pipeline_error(host, tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 120.00 GiB")

    monkeypatch.setattr(torch, "randn", no_memory)
    with pytest.raises(PipelineError, match=r"^model.input_shape \[2, 3, 64, 64\]: cannot allocate the input batch on cpu: CUDA out of memory"):
        run(host, tmp_path, "  - identity")
    assert not (tmp_path / "run").exists()


# --- one place for unexpected errors -----------------------------------------------------------------


@pytest.mark.parametrize("debug", [[], ["--debug"], ["after"]])
def test_an_unexpected_error_is_one_line_with_exit_1_and_debug_shows_the_traceback(installed, cli, tmp_path, monkeypatch, debug):
    def broken(*args, **kwargs):
        raise TypeError("an internal bug")

    monkeypatch.setattr("optkit.run.runner.run_pipeline", broken)
    args = ["run", write(tmp_path, "  - identity")]
    args = args + ["--debug"] if debug == ["after"] else debug + args
    result = cli(*args)

    assert result.exit_code == 1
    if debug:
        assert "Traceback (most recent call last)" in result.stderr and "an internal bug" in result.stderr
        assert result.stderr.rstrip().endswith("error: TypeError: an internal bug")
    else:
        assert one_line_error(result) == (
            "error: TypeError: an internal bug (an unexpected error: `optkit --debug ...` shows the traceback)"
        )


def test_a_report_that_cannot_be_written_is_one_line_with_exit_1(installed, cli, tmp_path):
    assert cli("run", write(tmp_path, "  - identity"), "-o", "out").exit_code == 0
    (tmp_path / "a-file").write_text("not a folder")
    result = cli("report", "out", "-o", "a-file/report")
    assert result.exit_code == 1
    assert one_line_error(result) == "error: a-file/report/plots: Not a directory"


# --- stdout stays JSON ---------------------------------------------------------------------------------


def test_run_json_keeps_prints_of_a_pass_off_stdout(installed, cli, tmp_path):
    result = cli("run", write(tmp_path, "  - prints"), "-o", "out", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["status"] == "ok"
    assert "PRINTED BY A PASS" in result.stderr


def test_run_json_keeps_c_level_writes_off_stdout(tmp_path):
    """In a real process: what C code writes to file descriptor 1 (torch's IR dump) goes to stderr."""
    write(tmp_path, "  - prints")
    script = textwrap.dedent(
        f"""
        import importlib.metadata, sys
        sys.path.insert(0, {str(TESTS)!r})
        from fake_distributions import FakeDistribution
        from test_hostile_runs import HOSTILE
        from test_cli import TEST_PASSES
        real = list(importlib.metadata.distributions())
        importlib.metadata.distributions = lambda: [*real, TEST_PASSES, HOSTILE]
        from optkit.cli import main
        sys.argv = ["optkit", "run", "p.yaml", "--json", "-o", "out"]
        main()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ok"
    assert "PRINTED BY A PASS" in done.stderr and "WRITTEN TO FD 1 BY C CODE" in done.stderr


# --- timing settings are scoped -------------------------------------------------------------------------


def test_configure_timing_restores_threads_cudnn_and_denormals():
    before = (torch.get_num_threads(), torch.backends.cudnn.benchmark, flush_denormal_enabled())
    with configure_timing(threads=before[0] + 1, cudnn_benchmark=not before[1], flush_denormal=not before[2]):
        assert torch.get_num_threads() == before[0] + 1
        assert torch.backends.cudnn.benchmark is (not before[1])
        if torch.set_flush_denormal(not before[2]):  # supported on this CPU
            assert flush_denormal_enabled() is (not before[2])
    assert (torch.get_num_threads(), torch.backends.cudnn.benchmark, flush_denormal_enabled()) == before


def test_a_run_leaves_the_process_timing_settings_as_they_were(host, tmp_path):
    before = (torch.get_num_threads(), torch.backends.cudnn.benchmark, flush_denormal_enabled())
    text = plugins_for_tests.TINY_PIPELINE.format(passes="  - identity").replace(
        "measure: {warmup: 1, iters: 3}", "measure: {warmup: 1, iters: 3, threads: 3, cudnn_benchmark: true, flush_denormal: true}"
    )
    report, _ = run_pipeline(parse_pipeline(text, host.get_pass), host, output=tmp_path / "run")
    assert report.stages[0].metrics.latency_ms.threads == 3
    assert (torch.get_num_threads(), torch.backends.cudnn.benchmark, flush_denormal_enabled()) == before


def test_info_leaves_the_process_timing_settings_as_they_were(cli):
    before = (torch.get_num_threads(), flush_denormal_enabled())
    result = cli("info", "python:plugins_for_tests:tiny_net", "-s", "1,3,32,32", "--threads", "3", "--iters", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["latency_ms"]["threads"] == 3
    assert (torch.get_num_threads(), flush_denormal_enabled()) == before



# --- the baseline model is the passes' to read, never to change (issue 25, item 3) --------------------


def test_a_pass_that_reads_the_baseline_model_passes_the_check(host, tmp_path):
    report, _ = run(host, tmp_path, "  - reads_baseline\n  - reads_baseline")
    assert report.status == "ok", report.error
    assert report.stages[1].details["teacher_mean"] == pytest.approx(report.stages[2].details["teacher_mean"], rel=1e-6)


@pytest.mark.parametrize(("culprit", "what"), [("zeroes_baseline", "its tensor '0.weight'"), ("slows_baseline", "its module '' (forward)")])
def test_a_pass_that_changes_the_baseline_model_fails_its_stage(host, tmp_path, culprit, what):
    report, run_dir = run(host, tmp_path, f"  - {culprit}\n  - reads_baseline")
    assert report.status == "failed"
    stage = report.stages[1]
    assert stage.status == "failed"
    assert stage.error.startswith(f"stage 1 ({culprit}) failed: pass {culprit!r} changed ctx.baseline_model ({what}")
    assert "passes read it, never change it" in stage.error
    assert report.stages[2].status == "skipped"
    # the baseline's latency was measured before the change; no stage gets a speed-up over a corrupted baseline
    written = json.loads((run_dir / "report.json").read_text())
    assert all("speedup" not in s["metrics"] for s in written["stages"])


# --- artifacts lie in their stage folder and exist (issue 25, item 9) ----------------------------------


@pytest.mark.parametrize("path", ["/tmp/optkit-elsewhere.onnx", "stages/01-identity/stolen.onnx", "model.onnx"])
def test_a_returned_artifact_outside_its_stage_folder_fails_the_stage(host, tmp_path, path):
    report, _ = run(host, tmp_path, f"  - identity\n  - returns_onnx_at: {{path: {path}}}")
    assert report.status == "failed"
    assert report.stages[2].status == "failed"
    assert report.stages[2].error.startswith("stage 2 (returns_onnx_at) failed: artifact ")
    assert "is outside the stage folder stages/02-returns_onnx_at; write artifacts with ctx.artifact_path(name)" in report.stages[2].error
    assert report.stages[2].metrics.latency_ms is None  # refused before it was measured


def test_a_listed_artifact_in_another_stage_folder_fails_the_stage(host, tmp_path):
    report, run_dir = run(host, tmp_path, f"  - writes_artifact\n  - lists_outside: {{path: {tmp_path}/run/stages/01-writes_artifact/x}}")
    assert report.stages[2].status == "failed" and "is outside the stage folder stages/02-lists_outside" in report.stages[2].error


def test_the_report_lists_only_artifacts_that_exist_at_the_end(host, tmp_path):
    report, run_dir = run(host, tmp_path, "  - writes_artifact\n  - deletes_earlier_artifacts")
    assert report.status == "ok"
    written = json.loads((run_dir / "report.json").read_text())
    assert written["stages"][1]["artifacts"] == []
    assert written["stages"][1]["details"]["artifacts_removed"] == ["stages/01-writes_artifact/note.txt"]


def test_latency_false_announces_no_side_by_side_timing(installed, cli, tmp_path):
    """Issue 25, item 10: with measure.latency: false nothing is timed, and the progress says nothing of it."""
    path = write(tmp_path, "  - identity", **{"measure: {warmup: 1, iters: 3}": "measure: {warmup: 1, iters: 3, latency: false}"})
    result = cli("run", path, "-o", "out")
    assert result.exit_code == 0, result.stderr
    assert "side by side" not in result.stderr
    assert "identity: ok" in result.stderr
