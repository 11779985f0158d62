"""Plugin authors cannot break the host, and the host says what it does with their plugins
(issue 12): registrations roll back, strict plugin mode, precise conflict fixes, listed sources,
documented hook order, a test kit that checks under ``python -O``, reports without matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import plugins_for_tests
import pytest
from fake_distributions import FakeDistribution, install_fake_distributions, write_module
from test_cli import BROKEN_WARNING, test_passes  # noqa: F401  (test_passes: a fixture)
from test_registry import SHARPEN_PLUGIN

from optkit import Pass, hookimpl
from optkit.config.pipeline import parse_pipeline
from optkit.errors import PluginError
from optkit.host.facade import Host
from optkit.run.runner import run_pipeline

README = Path(__file__).parents[1] / "README.md"


# --- registration is all or nothing --------------------------------------------------------------------


class Half(Pass):
    name = "half_registered"
    summary = "Registered by a plugin that then fails."

    def apply(self, model, ctx):
        return model


class HalfPlugin:
    __name__ = "half"

    @hookimpl
    def optkit_register_passes(self, register):
        register(Half)
        raise RuntimeError("failed after registering one pass")

    @hookimpl
    def optkit_register_sources(self, register):
        register("halfsrc", lambda request: None)
        register("bad scheme", lambda request: None)


def test_a_plugin_failing_half_way_registers_nothing_from_that_hook():
    host = Host.with_plugins(HalfPlugin(), plugins_for_tests)

    assert "half_registered" not in host.passes and "halfsrc" not in host.sources
    assert "identity" in host.passes and "python" in host.sources
    [broken] = host.broken
    assert (broken.name, broken.error) == (
        "half",
        "optkit_register_passes raised RuntimeError: failed after registering one pass; "
        "half: register(scheme, loader) needs a name and a callable",
    )
    with pytest.raises(Exception, match="unknown pass 'half_registered'"):
        host.get_pass("half_registered")


# --- strict plugin mode ---------------------------------------------------------------------------------


def pipeline_file(write_pipeline):
    return write_pipeline(plugins_for_tests.TINY_PIPELINE.format(passes="  - identity"))


@pytest.mark.parametrize("command", ["run", "validate"])
def test_run_and_validate_warn_about_broken_plugins(test_passes, cli, write_pipeline, command):  # noqa: F811
    result = cli(command, pipeline_file(write_pipeline), *(["-o", "out"] if command == "run" else []))
    assert result.exit_code == 0
    assert result.stderr.startswith(BROKEN_WARNING)


@pytest.mark.parametrize("how", ["flag before", "flag after", "environment"])
@pytest.mark.parametrize("command", ["run", "validate"])
def test_strict_plugins_fails_run_and_validate_on_a_broken_plugin(test_passes, cli, write_pipeline, monkeypatch, how, command):  # noqa: F811
    path = pipeline_file(write_pipeline)
    args = [command, path]
    if how == "flag before":
        args = ["--strict-plugins", *args]
    elif how == "flag after":
        args = [*args, "--strict-plugins"]
    else:
        monkeypatch.setenv("OPTKIT_STRICT_PLUGINS", "1")
    result = cli(*args)

    assert result.exit_code == 2
    assert result.stderr == (
        "error: 1 plugin(s) failed to load, and strict plugin mode is on:\n"
        "  plugin 'broken' from optkit-broken 0.9: ModuleNotFoundError: No module named 'optkit_no_such_dependency'; "
        "disable it with OPTKIT_DISABLE_PLUGINS=broken\n"
    )
    assert not (path.parent / "runs").exists()


@pytest.mark.parametrize("command", [["passes", "--json"], ["sources"], ["schema"]])
def test_every_command_follows_the_one_broken_plugin_policy(test_passes, cli, monkeypatch, command):  # noqa: F811
    lenient = cli(*command)
    assert lenient.exit_code == 0 and lenient.stderr == BROKEN_WARNING
    monkeypatch.setenv("OPTKIT_STRICT_PLUGINS", "1")
    strict = cli(*command)
    assert strict.exit_code == 2 and strict.stdout == ""
    assert strict.stderr == (
        "error: 1 plugin(s) failed to load, and strict plugin mode is on:\n"
        "  plugin 'broken' from optkit-broken 0.9: ModuleNotFoundError: No module named 'optkit_no_such_dependency'; "
        "disable it with OPTKIT_DISABLE_PLUGINS=broken\n"
    )


def test_strict_plugins_passes_when_every_plugin_loads(cli, monkeypatch, write_pipeline):
    monkeypatch.setenv("OPTKIT_STRICT_PLUGINS", "1")
    assert cli("passes").exit_code == 0
    assert cli("validate", write_pipeline("model: {source: 'torchvision:resnet18'}\n")).exit_code == 0


# --- a conflict with a standard pass names the precise fix ---------------------------------------------------


@pytest.fixture
def second_fuse_bn(monkeypatch, tmp_path):
    source = SHARPEN_PLUGIN.format(who="fast").replace('name = "sharpen"', 'name = "fuse_bn"')
    write_module(monkeypatch, tmp_path, "optkit_fast_fuse", source)
    install_fake_distributions(monkeypatch, FakeDistribution("optkit-fast", "1.0", {"fuse_bn": "optkit_fast_fuse"}))


def test_a_conflict_with_a_standard_pass_suggests_disabling_one_plugin_not_optkit(second_fuse_bn):
    with pytest.raises(PluginError) as caught:
        Host().get_pass("fuse_bn")
    message = str(caught.value)
    assert message.startswith("the pass 'fuse_bn' is registered by more than one plugin: ")
    assert "OPTKIT_DISABLE_PLUGINS=optkit:fuse_bn (only that plugin of optkit)" in message
    assert "OPTKIT_DISABLE_PLUGINS=optkit-fast:fuse_bn (only that plugin of optkit-fast)" in message
    assert "OPTKIT_DISABLE_PLUGINS=optkit " not in message and "OPTKIT_DISABLE_PLUGINS=optkit;" not in message


@pytest.mark.parametrize(("disabled", "kept"), [("optkit:fuse_bn", "optkit-fast"), ("optkit-fast:fuse_bn", "optkit")])
def test_the_suggested_fix_keeps_every_other_standard_pass(second_fuse_bn, monkeypatch, disabled, kept):
    monkeypatch.setenv("OPTKIT_DISABLE_PLUGINS", disabled)
    host = Host()
    assert host.passes.get("fuse_bn").plugin.distribution == kept
    assert {"export_onnx", "prune_l1", "reclassify", "tta"} <= set(host.passes.names())
    assert {"torchvision", "python", "file"} <= set(host.sources.names())


def test_a_conflict_names_what_else_disabling_a_plugin_removes():
    class OtherSources:
        __name__ = "other-sources"

        @hookimpl
        def optkit_register_sources(self, register):
            register("file", lambda request: None)

    message = Host.with_plugins(OtherSources()).sources.conflict_message("file")
    assert "OPTKIT_DISABLE_PLUGINS=optkit:sources (only that plugin of optkit; it also registers 'hf', 'python', 'torchvision')" in message
    assert "OPTKIT_DISABLE_PLUGINS=other-sources (only that plugin of this process)" in message


# --- sources are listed ---------------------------------------------------------------------------------


def test_sources_lists_every_scheme_with_its_plugin(cli):
    data = json.loads(cli("sources", "--json").stdout)
    rows = {row["scheme"]: row for row in data["sources"]}
    assert {"torchvision", "python", "file"} <= set(rows)
    assert rows["file"]["distribution"] == "optkit" and rows["file"]["plugin"] == "sources"
    assert rows["python"]["summary"] == "python:package.module:callable called with model.kwargs."
    table = " ".join(cli("sources").stdout.split())
    assert "torchvision:" in table and "file:" in table and "optkit" in table
    datasets = {row["scheme"]: row for row in data["datasets"]}
    assert set(datasets) >= {"imagefolder", "python"} and datasets["imagefolder"]["plugin"] == "datasets"
    assert datasets["imagefolder"]["summary"] == "imagefolder:PATH: class sub-folders of images, read through data.transform."
    assert "optkit dataset sources" in table and "imagefolder:" in table


# --- hook order -----------------------------------------------------------------------------------------


def test_observers_are_called_last_registered_first_and_tryfirst_goes_ahead(tmp_path):
    calls: list[str] = []

    def observer(label: str, **marks: bool):
        class Observer:
            __name__ = label

            @hookimpl(**marks)
            def optkit_stage_finished(self, result):
                calls.append(label)

        return Observer()

    host = Host.with_plugins(plugins_for_tests, observer("first"), observer("second"), observer("eager", tryfirst=True),
                             observer("late", trylast=True))
    pipeline = parse_pipeline(plugins_for_tests.TINY_PIPELINE.format(passes="  - identity"), host.get_pass)
    run_pipeline(pipeline, host, output=tmp_path / "run")

    assert calls[:4] == ["eager", "second", "first", "late"]
    assert len(calls) == 8  # two stages


def test_the_plugin_guide_documents_the_hook_order():
    text = " ".join((README.parent / "docs" / "plugins" / "index.md").read_text().split())
    assert "last registered first" in text and "tryfirst=True" in text and "trylast=True" in text


# --- the test kit checks under python -O ---------------------------------------------------------------------


def test_check_report_contract_raises_under_python_minus_o():
    code = (
        "from optkit.testing import check_report_contract\n"
        "try:\n"
        "    check_report_contract({'schema': 1})\n"
        "except AssertionError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "refused: report.json: report lacks optkit_version, environment, pipeline, status, timing, stages\n"


# --- reports without matplotlib ------------------------------------------------------------------------------


@pytest.fixture
def no_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory) -> Path:
    host = Host.with_plugins(plugins_for_tests)
    pipeline = parse_pipeline(plugins_for_tests.TINY_PIPELINE.format(passes="  - identity"), host.get_pass)
    report, run_dir = run_pipeline(pipeline, host, output=tmp_path_factory.mktemp("runs") / "run")
    assert report.status == "ok"
    return run_dir


def test_report_without_matplotlib_writes_everything_but_the_plots(no_matplotlib, timed_run, cli, tmp_path):
    result = cli("report", timed_run, "-o", tmp_path / "report")

    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "report/report.json").read_text())
    assert data["status"] == "ok"
    assert data["meta"]["notes"] == ["No plots: plots need matplotlib: pip install 'optkit[plots]'."]
    assert "No plots: plots need matplotlib" in (tmp_path / "report/report.md").read_text()
    assert (tmp_path / "report/report.html").is_file() and not (tmp_path / "report/plots").exists()


def test_a_sweep_without_matplotlib_ends_with_its_final_report(no_matplotlib, timed_run, tmp_path):
    from optkit.config.sweep import parse_sweep
    from optkit.sweep.driver import run_sweep
    from optkit.sweep.jobs import JobOutcome

    class Replay:
        """An executor that hands back a finished run instead of running one."""

        name = "replay"

        def run(self, jobs, on_done):
            report = json.loads((timed_run / "report.json").read_text())
            outcomes = [JobOutcome(job, "ok", report=report, seconds=1.0) for job in jobs]
            for outcome in outcomes:
                on_done(outcome)
            return outcomes

    sweep = parse_sweep("models: [torchvision:resnet18]\npipelines: {base: []}\n")
    result = run_sweep(sweep, Replay(), tmp_path / "sweep")

    data = json.loads((result.output / "report.json").read_text())
    assert data["status"] == "ok" and len(data["runs"]) == 1
    assert data["meta"]["notes"] == ["No plots: plots need matplotlib: pip install 'optkit[plots]'."]
