"""The command line, driven as a person does: exit codes and the messages they read."""

from __future__ import annotations

import json
import subprocess
import sys

import plugins_for_tests
import pytest
from fake_distributions import FakeDistribution, install_fake_distributions, write_module

TEST_PASSES = FakeDistribution("optkit-test-passes", "1.2.3", {"test_passes": "plugins_for_tests"})
BROKEN = FakeDistribution("optkit-broken", "0.9", {"broken": "optkit_broken_plugin"})


@pytest.fixture
def test_passes(monkeypatch, tmp_path):
    """The test passes installed through an entry point, plus a plugin that fails to import."""
    write_module(monkeypatch, tmp_path, "optkit_broken_plugin", "import optkit_no_such_dependency\n")
    install_fake_distributions(monkeypatch, TEST_PASSES, BROKEN)
    monkeypatch.chdir(tmp_path)  # runs go to runs/... under tmp_path


def pipeline(write_pipeline, passes: str = "  - identity", **replace: str):
    text = plugins_for_tests.TINY_PIPELINE.format(passes=passes)
    for old, new in replace.items():
        text = text.replace(old, new)
    return write_pipeline(text)


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


BROKEN_WARNING = (
    "warning: plugin 'broken' from optkit-broken 0.9 failed to load: ModuleNotFoundError: No module named "
    "'optkit_no_such_dependency'; disable it with OPTKIT_DISABLE_PLUGINS=broken, or fail on it with --strict-plugins\n"
)


def errors(result) -> str:
    """stderr after the warning about the broken test plugin, which run and validate print first."""
    assert result.stderr.startswith(BROKEN_WARNING), result.stderr
    return result.stderr[len(BROKEN_WARNING):]


def test_import_and_help_do_not_import_torch_pydantic_or_plugins():
    code = (
        "import sys\n"
        "from optkit.cli import main\n"
        "assert 'torch' not in sys.modules, 'import optkit.cli imported torch'\n"
        "sys.argv = ['optkit', '--help']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
        "heavy = ('torch', 'pydantic', 'optkit_plugins')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: optkit [OPTIONS] COMMAND [ARGS]..." in done.stdout


def test_help_lists_commands_and_exit_codes(cli):
    text = cli("--help").output
    for command in ("run", "validate", "passes", "schema"):
        assert f"  {command} " in text
    assert "Exit codes:" in text and "2    usage, pipeline-file or plugin error" in text and "130  interrupted" in text


def test_version(cli):
    assert cli("--version").output == "optkit, version 0.1.0\n"


def test_passes_lists_each_pass_with_its_distribution_and_the_broken_plugin(test_passes, cli):
    result = cli("passes")

    assert result.exit_code == 0
    text = flat(result.output)
    assert "identity" in text and "Return the model unchanged." in text and "optkit-test-passes 1.2.3" in text
    assert ("broken plugin 'broken' (optkit-broken 0.9): ModuleNotFoundError: No module named "
            "'optkit_no_such_dependency' disable it with OPTKIT_DISABLE_PLUGINS=broken") in text


def test_passes_json(test_passes, cli):
    result = cli("passes", "--json")
    assert result.stderr == BROKEN_WARNING  # the one broken-plugin policy: named on stderr, stdout stays JSON
    data = json.loads(result.stdout)
    identity = next(row for row in data["passes"] if row["name"] == "identity")
    assert identity == {"name": "identity", "summary": "Return the model unchanged.", "preserves_outputs": True,
                        "plugin": "test_passes", "distribution": "optkit-test-passes", "version": "1.2.3"}
    broken = next(row for row in data["broken"] if row["plugin"] == "broken")
    assert broken == {"plugin": "broken", "distribution": "optkit-broken", "version": "0.9",
                      "error": "ModuleNotFoundError: No module named 'optkit_no_such_dependency'",
                      "disable": "OPTKIT_DISABLE_PLUGINS=broken"}


def test_disabled_plugin_is_neither_listed_nor_broken(test_passes, cli, monkeypatch):
    monkeypatch.setenv("OPTKIT_DISABLE_PLUGINS", "broken,optkit-test-passes")
    data = json.loads(cli("passes", "--json").stdout)
    assert "broken" not in [row["plugin"] for row in data["broken"]]
    assert "identity" not in [row["name"] for row in data["passes"]]


def test_validate_and_run_work_beside_a_broken_plugin(test_passes, cli, write_pipeline):
    path = pipeline(write_pipeline, "  - identity\n  - scale: {factor: 2}")

    validated = cli("validate", path)
    assert validated.exit_code == 0
    assert validated.stdout == f"{path}: ok — python:plugins_for_tests:tiny_net, 2 stage(s): identity, scale\n"
    assert validated.stderr == BROKEN_WARNING

    ran = cli("run", path, "--output", "out")
    assert ran.exit_code == 0, ran.output
    text = flat(ran.stdout)
    assert "Report: out/report.json, out/report.md · status: ok" in text
    assert "baseline" in text and "identity" in text and "scale" in text
    assert "[2/2] scale: ok" in flat(ran.stderr)  # the progress lines
    # Timed side by side after the last stage, as the progress and the table's notes say.
    assert "timing the baseline and every stage side by side (3 rounds) …" in flat(ran.stderr)
    assert "Latency: the baseline and every stage timed side by side, round-robin (3 rounds)" in text
    assert "'tie' = the interval includes 1×" in text


def test_pipeline_using_the_broken_plugin_names_it_and_how_to_disable_it(test_passes, cli, write_pipeline):
    path = pipeline(write_pipeline, "  - identity\n  - broken")

    result = cli("validate", path)

    assert result.exit_code == 2
    first_line, rest = errors(result).split("\n", 1)
    assert first_line.startswith(f"error: {path}:8: stage 2: unknown pass 'broken'; registered: drifts, ")
    assert rest == (
        "  plugin 'broken' from optkit-broken 0.9 failed to load and may provide it: "
        "ModuleNotFoundError: No module named 'optkit_no_such_dependency'\n"
        "  fix or reinstall it, or disable it with OPTKIT_DISABLE_PLUGINS=broken\n"
    )
    assert cli("run", path).exit_code == 2
    assert not (write_pipeline("").parent / "runs").exists()  # nothing was run


def test_run_json_prints_only_the_report_on_stdout(test_passes, cli, write_pipeline):
    result = cli("run", pipeline(write_pipeline), "--json", "-o", "out")

    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["status"] == "ok" and [s["name"] for s in data["stages"]] == ["baseline", "identity"]
    assert data == json.loads(open("out/report.json").read())


def test_failing_stage_exits_1_and_keeps_the_partial_report(test_passes, cli, write_pipeline):
    result = cli("run", pipeline(write_pipeline, "  - writes_artifact\n  - raises\n  - identity"), "-o", "out")

    assert result.exit_code == 1
    assert "stage 2 (raises) failed: RuntimeError: boom from the raises pass" in flat(result.stderr)
    assert "status: failed" in flat(result.stdout)
    report = json.load(open("out/report.json"))
    assert [s["status"] for s in report["stages"]] == ["ok", "ok", "failed", "skipped"]
    assert open("out/stages/01-writes_artifact/note.txt").read() == "written by writes_artifact\n"


def test_interrupt_exits_130_and_keeps_the_partial_report(test_passes, cli, write_pipeline):
    result = cli("run", pipeline(write_pipeline, "  - identity\n  - interrupts"), "-o", "out")

    assert result.exit_code == 130
    assert json.load(open("out/report.json"))["status"] == "interrupted"


def test_second_run_goes_to_a_new_folder_and_overwrite_reuses_it(test_passes, cli, write_pipeline):
    path = pipeline(write_pipeline)
    assert cli("run", path).exit_code == 0
    second = cli("run", path)
    assert "Report: runs/pipeline-2/report.json" in flat(second.stdout)
    third = cli("run", path, "--overwrite")
    assert "Report: runs/pipeline/report.json" in flat(third.stdout)


def test_device_option_is_checked(test_passes, cli, write_pipeline):
    result = cli("run", pipeline(write_pipeline), "--device", "tpu")
    assert result.exit_code == 2
    assert errors(result) == "error: device 'tpu': expected auto, cpu, cuda, cuda:N or N\n"


BAD_PIPELINES = {
    "duplicate key": ({"device: cpu": "device: cpu\ndevice: cpu"}, ":5: duplicate key 'device' (first given on line 4)"),
    "unknown top-level key": ({"device:": "devcie:"}, ":4: unknown key 'devcie'; did you mean 'device'?"),
    "unknown nested key": ({"warmup:": "warmups:"}, ":5: unknown key 'measure.warmups'; did you mean 'warmup'?"),
    "unknown pass": ({"  - identity": "  - identiy"}, ":7: stage 1: unknown pass 'identiy'; did you mean 'identity'?"),
    "wrong option type": (
        {"  - identity": "  - scale: {factor: [1]}"},
        ":7: stage 1 (scale): option 'factor': Input should be a valid number, got [1]",
    ),
    "missing model": (
        {"model:\n  source: python:plugins_for_tests:tiny_net\n  input_shape: [2, 3, 64, 64]\n": ""},
        ":1: missing required key 'model'",
    ),
    "not YAML": ({"passes:": "passes: ]"}, ":6: invalid YAML: while parsing a block node expected the node content, but found ']'"),
}


@pytest.mark.parametrize("case", list(BAD_PIPELINES))
def test_bad_pipeline_gives_its_message_and_exit_2(test_passes, cli, write_pipeline, case):
    replace, message = BAD_PIPELINES[case]
    text = plugins_for_tests.TINY_PIPELINE.format(passes="  - identity")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new, 1)
    path = write_pipeline(text)

    for command in ("validate", "run"):
        result = cli(command, path)
        assert result.exit_code == 2
        assert errors(result).startswith(f"error: {path}{message}"), result.stderr


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.yaml", "no such pipeline file"),
        (lambda d: d, "is a folder, not a pipeline file"),
        (lambda d: (d / "bin.yaml", (d / "bin.yaml").write_bytes(b"\xff\xfe model")), "cannot read pipeline file: 'utf-8' codec"),
        (lambda d: (d / "list.yaml", (d / "list.yaml").write_text("- identity\n")), "a pipeline file is a mapping"),
    ],
    ids=["missing", "folder", "not utf-8", "not a mapping"],
)
def test_unreadable_pipeline_file_exits_2(test_passes, cli, tmp_path, make, message):
    made = make(tmp_path)
    path = made[0] if isinstance(made, tuple) else made
    result = cli("validate", path)
    assert result.exit_code == 2
    assert errors(result).startswith(f"error: {path}") and message in result.stderr


def test_schema_includes_installed_pass_options(test_passes, cli):
    result = cli("schema")
    assert result.stderr == BROKEN_WARNING  # its passes are missing from the schema, and it says why
    schema = json.loads(result.stdout)
    assert schema["title"] == "optkit pipeline"
    assert schema["$defs"]["scale_options"]["properties"]["mode"]["enum"] == ["outputs", "weights"]
