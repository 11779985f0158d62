"""The plugin manager: entry points, broken and disabled plugins, and one test per hook."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import plugins_for_tests
import pytest
import torch
from fake_distributions import FakeDistribution, install_fake_distributions, write_module
from pydantic import BaseModel
from torch import nn

from optkit import hookimpl
from optkit.config.pipeline import parse_pipeline
from optkit.errors import PipelineError
from optkit.host.facade import Host
from optkit.host.manager import DISABLE_ENV, PluginRecord, disabled_from_env, get_plugin_manager
from optkit.run.runner import run_pipeline

TEST_PASSES = FakeDistribution("optkit-test-passes", "1.2.3", {"test_passes": "plugins_for_tests"})

BROKEN_SOURCE = "import optkit_no_such_dependency  # the plugin's own dependency is missing\n"


def pipeline_text(passes: str) -> str:
    return plugins_for_tests.TINY_PIPELINE.format(passes=passes)


def test_each_call_builds_a_fresh_manager():
    first, second = get_plugin_manager(), get_plugin_manager()
    assert first is not second
    first.register(plugins_for_tests, name="only-in-first")
    assert not second.is_registered(plugins_for_tests)


def test_standard_plugins_come_through_entry_points_like_any_other():
    pm = get_plugin_manager(disabled=())
    sources = pm.records["sources"]
    assert (sources.value, sources.distribution) == ("optkit_plugins.sources", "optkit")
    assert pm.is_registered(pm.get_plugin("sources"))


def test_entry_point_plugin_is_recorded_with_distribution_and_version(monkeypatch):
    install_fake_distributions(monkeypatch, TEST_PASSES)

    host = Host()

    identity = host.passes.get("identity")
    assert identity.obj is plugins_for_tests.Identity
    assert identity.plugin == PluginRecord("test_passes", "plugins_for_tests", "optkit-test-passes", "1.2.3")
    assert identity.plugin.origin == "optkit-test-passes 1.2.3"


def test_broken_plugin_is_named_and_the_rest_still_loads(monkeypatch, tmp_path):
    write_module(monkeypatch, tmp_path, "optkit_broken_plugin", BROKEN_SOURCE)
    install_fake_distributions(
        monkeypatch, FakeDistribution("optkit-broken", "0.9", {"broken": "optkit_broken_plugin"}), TEST_PASSES
    )

    host = Host()

    [broken] = [r for r in host.broken if r.name == "broken"]
    assert (broken.distribution, broken.version) == ("optkit-broken", "0.9")
    assert broken.error == "ModuleNotFoundError: No module named 'optkit_no_such_dependency'"
    assert broken.disable_hint == f"{DISABLE_ENV}=broken"
    assert "identity" in host.passes and "python" in host.sources


def test_pipeline_not_using_a_broken_plugin_runs(monkeypatch, tmp_path):
    write_module(monkeypatch, tmp_path, "optkit_broken_plugin", BROKEN_SOURCE)
    install_fake_distributions(monkeypatch, FakeDistribution("optkit-broken", "0.9", {"broken": "optkit_broken_plugin"}))
    host = Host.with_plugins(plugins_for_tests)

    report, _ = run_pipeline(parse_pipeline(pipeline_text("  - identity"), host.get_pass), host, output=tmp_path / "run")

    assert [s.status for s in report.stages] == ["ok", "ok"]


def test_plugin_raising_at_import_is_recorded(monkeypatch, tmp_path):
    write_module(monkeypatch, tmp_path, "optkit_raising_plugin", "raise RuntimeError('no licence key')\n")
    install_fake_distributions(monkeypatch, FakeDistribution("optkit-raising", "1.0", {"raising": "optkit_raising_plugin"}))

    [broken] = [r for r in get_plugin_manager().broken if r.name == "raising"]
    assert broken.error == "RuntimeError: no licence key"


def test_plugin_with_a_misspelled_hook_is_recorded_not_fatal(monkeypatch, tmp_path):
    write_module(monkeypatch, tmp_path, "optkit_misspelled_plugin", """
        from optkit import hookimpl

        @hookimpl
        def optkit_register_pass(register):
            pass
    """)
    install_fake_distributions(monkeypatch, FakeDistribution("optkit-typo", "1.0", {"typo": "optkit_misspelled_plugin"}))

    pm = get_plugin_manager()

    [broken] = [r for r in pm.broken if r.name == "typo"]
    assert broken.error.startswith("invalid hook implementation: ")
    assert "unknown hook 'optkit_register_pass'" in broken.error
    assert not pm.has_plugin("typo")


def test_plugin_with_a_wrong_hook_argument_is_recorded(monkeypatch, tmp_path):
    write_module(monkeypatch, tmp_path, "optkit_wrong_args_plugin", """
        from optkit import hookimpl

        @hookimpl
        def optkit_register_passes(registry):
            pass
    """)
    install_fake_distributions(monkeypatch, FakeDistribution("optkit-args", "1.0", {"args": "optkit_wrong_args_plugin"}))

    [broken] = [r for r in get_plugin_manager().broken if r.name == "args"]
    assert broken.error.startswith("invalid hook implementation: Plugin 'args' for hook 'optkit_register_passes'")
    assert "Argument(s) {'registry'} are declared in the hookimpl but can not be found in the hookspec" in broken.error


@pytest.mark.parametrize("value", ["disabled_one", "optkit-disabled", " other , disabled_one "])
def test_disabled_plugins_are_not_imported(monkeypatch, tmp_path, value):
    # The module would fail at import: being disabled, it is never imported.
    write_module(monkeypatch, tmp_path, "optkit_disabled_plugin", "raise RuntimeError('imported')\n")
    install_fake_distributions(monkeypatch, FakeDistribution("optkit-disabled", "2.0", {"disabled_one": "optkit_disabled_plugin"}))
    monkeypatch.setenv(DISABLE_ENV, value)

    pm = get_plugin_manager()

    record = pm.records["disabled_one"]
    assert record.disabled and record.error is None
    assert pm.broken == []


def test_disabled_from_env_splits_and_trims(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "a, b,,c ")
    assert disabled_from_env() == {"a", "b", "c"}
    monkeypatch.delenv(DISABLE_ENV)
    assert disabled_from_env() == set()


def test_same_module_through_two_entry_points_registers_once(monkeypatch):
    install_fake_distributions(
        monkeypatch, TEST_PASSES, FakeDistribution("optkit-again", "1.0", {"again": "plugins_for_tests"})
    )

    host = Host.with_plugins(plugins_for_tests)  # and a third time, in-process

    assert host.broken == [] and host.passes.conflicts == {}
    assert host.passes.get("identity").plugin.name == "test_passes"


def test_register_hook_that_raises_marks_only_that_plugin_broken():
    class Exploding:
        __name__ = "exploding"

        @hookimpl
        def optkit_register_passes(self, register):
            raise ValueError("bad registry state")

    host = Host.with_plugins(Exploding(), plugins_for_tests)

    assert "identity" in host.passes
    [broken] = host.broken
    assert (broken.name, broken.error) == ("exploding", "optkit_register_passes raised ValueError: bad registry state")


def test_registering_something_that_is_not_a_pass_is_refused_by_name():
    class NotAPass:
        name = "not_a_pass"

    class Wrong:
        __name__ = "wrong"

        @hookimpl
        def optkit_register_passes(self, register):
            register(NotAPass)

    host = Host.with_plugins(Wrong())

    assert "not_a_pass" not in host.passes
    [broken] = host.broken
    assert broken.error.startswith("wrong: register() takes an optkit.Pass subclass, got <class ")


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        ({"name": "Bad Name", "summary": "s"}, "BadPass.name must be a lower_snake_case string, got 'Bad Name'"),
        ({"name": "bad", "summary": None}, "BadPass.summary must be a one-line string"),
        ({"name": "bad", "summary": "s", "Options": dict}, "BadPass.Options must subclass optkit.Pass.Options"),
        # A plain pydantic model would silently ignore misspelled options: refused, with the fix.
        ({"name": "bad", "summary": "s", "Options": type("Options", (BaseModel,), {"__annotations__": {"k": int}, "k": 1})},
         "BadPass.Options must subclass optkit.Pass.Options (write `class Options(Pass.Options):`), so that unknown "
         "options are rejected instead of silently ignored"),
        ({"name": "bad", "summary": "s", "apply": abstractmethod(lambda self, model, ctx: model)},
         "BadPass does not implement apply"),
        # Artifact kinds are classes, so that validation can tell which stage makes what another reads.
        ({"name": "bad", "summary": "s", "consumes": "onnx"},
         "BadPass.consumes must be an optkit.Artifact subclass (e.g. optkit.OnnxArtifact) or None, got 'onnx'"),
        ({"name": "bad", "summary": "s", "produces": dict}, "BadPass.produces must be an optkit.Artifact subclass"),
    ],
)
def test_malformed_pass_class_is_refused_with_what_is_missing(attributes, problem):
    bad = ABCMeta("BadPass", (plugins_for_tests.Identity,), attributes)

    class Registers:
        __name__ = "registers-bad"

        @hookimpl
        def optkit_register_passes(self, register):
            register(bad)

    host = Host.with_plugins(Registers())
    [broken] = host.broken
    assert broken.error.startswith(f"registers-bad: {problem}")
    assert "bad" not in host.passes


# One test per hook (tests/test_hookspecs.py checks that every hook has one).


def test_hook_optkit_register_passes():
    host = Host.with_plugins(plugins_for_tests)

    names = {"identity", "scale", "raises", "drifts", "interrupts", "writes_artifact"}
    assert names <= set(host.passes.names())
    assert host.get_pass("scale") is plugins_for_tests.Scale


def test_hook_optkit_register_sources(tmp_path):
    calls = []

    class ConstantSource:
        __name__ = "constant-source"

        @hookimpl
        def optkit_register_sources(self, register):
            def load(request):
                calls.append((request.target, request.spec.kwargs))
                request.details["built"] = request.target
                return nn.Linear(4, int(request.target))

            register("linear", load)

    host = Host.with_plugins(ConstantSource(), plugins_for_tests)
    text = "model: {source: 'linear:3', input_shape: [2, 4], kwargs: {k: 1}}\ndevice: cpu\n" \
           "measure: {warmup: 0, iters: 1}\npasses: [identity]\n"

    report, _ = run_pipeline(parse_pipeline(text, host.get_pass), host, output=tmp_path / "run")

    assert calls == [("3", {"k": 1})]
    assert report.stages[0].details == {"built": "3"}
    assert report.stages[0].metrics.params == 4 * 3 + 3


def test_unknown_source_scheme_names_the_registered_ones(tmp_path):
    host = Host.with_plugins(plugins_for_tests)
    pipeline = parse_pipeline("model: {source: 'pythn:pkg:f'}\npasses: []\n", host.get_pass)
    with pytest.raises(PipelineError, match=r"^model.source: unknown model source scheme 'pythn'; did you mean 'python'\?"):
        run_pipeline(pipeline, host, output=tmp_path / "run")


def test_hook_optkit_stage_started(tmp_path):
    recorder = plugins_for_tests.StageRecorder()
    seen_runs = []

    class RunWatcher:
        __name__ = "run-watcher"

        @hookimpl
        def optkit_stage_started(self, stage, index, run):
            seen_runs.append((run.stage_names, run.stage_count, run.device, run.output_dir))

    host = Host.with_plugins(plugins_for_tests, recorder, RunWatcher())
    pipeline = parse_pipeline(pipeline_text("  - identity\n  - scale"), host.get_pass)

    _, run_dir = run_pipeline(pipeline, host, output=tmp_path / "run")

    started = [c for c in recorder.calls if c[0] == "started"]
    assert started == [("started", "baseline", 0, "running"), ("started", "identity", 1, "running"),
                       ("started", "scale", 2, "running")]
    assert seen_runs[0] == (["baseline", "identity", "scale"], 3, "cpu", run_dir)


def test_hook_optkit_stage_finished(tmp_path):
    recorder = plugins_for_tests.StageRecorder()
    host = Host.with_plugins(plugins_for_tests, recorder)
    pipeline = parse_pipeline(pipeline_text("  - identity\n  - raises\n  - scale"), host.get_pass)

    run_pipeline(pipeline, host, output=tmp_path / "run")

    # Failed stages are reported too; stages never reached are not.
    assert recorder.calls == [
        ("started", "baseline", 0, "running"), ("finished", "baseline", 0, "ok"),
        ("started", "identity", 1, "running"), ("finished", "identity", 1, "ok"),
        ("started", "raises", 2, "running"), ("finished", "raises", 2, "failed"),
    ]


def test_stage_finished_sees_measured_metrics(tmp_path):
    results = []

    class Collector:
        __name__ = "collector"

        @hookimpl
        def optkit_stage_finished(self, result, run):
            results.append(result)

    host = Host.with_plugins(plugins_for_tests, Collector())
    run_pipeline(parse_pipeline(pipeline_text("  - scale: {factor: 3}"), host.get_pass), host, output=tmp_path / "run")

    model = plugins_for_tests.tiny_net()
    assert results[0].metrics.params == sum(p.numel() for p in model.parameters())
    assert results[1].details == {"factor": 3.0}
    torch.testing.assert_close(results[1].metrics.drift.cosine, 1.0, atol=1e-9, rtol=0)
    # max |3y - y| = 2 max|y|: the drift is measured against the baseline's outputs.
    torch.testing.assert_close(
        results[1].metrics.drift.max_abs, 2 * results[1].metrics.drift.reference_max_abs, atol=1e-6, rtol=1e-6
    )


def test_in_process_plugin_module_gets_its_module_name():
    pm = get_plugin_manager(extra_plugins=[plugins_for_tests])
    assert pm.get_plugin("plugins_for_tests") is plugins_for_tests
    assert pm.record_of("plugins_for_tests").origin == "plugins_for_tests"

