"""Every hook is called through pluggy (issue 23): wrappers run around the stage observers,
tracing sees the calls, a wrapper on a registration hook is refused by name, and an observer or
wrapper that raises is logged and skipped."""

from __future__ import annotations

import logging

import plugins_for_tests

from optkit import hookimpl
from optkit.config.pipeline import parse_pipeline
from optkit.host.facade import Host
from optkit.run.runner import run_pipeline


def _run(host: Host, tmp_path, passes: str = "  - identity\n  - scale") -> None:
    pipeline = parse_pipeline(plugins_for_tests.TINY_PIPELINE.format(passes=passes), host.get_pass)
    run_pipeline(pipeline, host, output=tmp_path / "run")


class Observer:
    __name__ = "observer"

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl
    def optkit_stage_finished(self, result):
        self.calls.append(f"finished {result.name}")


def test_a_wrapper_runs_around_every_stage_observer_call(tmp_path):
    calls: list[str] = []

    class Wrapper:
        __name__ = "wrapper"

        @hookimpl(wrapper=True)
        def optkit_stage_finished(self, result):
            calls.append(f"before {result.name}")
            outcome = yield
            calls.append(f"after {result.name}")
            return outcome

        @hookimpl(hookwrapper=True)
        def optkit_stage_started(self, stage):
            calls.append(f"old-style before {stage}")
            yield
            calls.append(f"old-style after {stage}")

    _run(Host.with_plugins(plugins_for_tests, Observer(calls), Wrapper()), tmp_path)

    assert calls == [
        *[part for stage in ("baseline", "identity", "scale") for part in (
            f"old-style before {stage}", f"old-style after {stage}", f"before {stage}", f"finished {stage}", f"after {stage}")],
    ]


def test_tracing_sees_the_observer_and_registration_calls(tmp_path):
    host = Host.with_plugins(plugins_for_tests)
    traced: list[str] = []
    undo = host.pm.add_hookcall_monitoring(lambda name, impls, kwargs: traced.append(name), lambda *args: None)
    _run(host, tmp_path, "  - identity")
    undo()

    assert "optkit_register_passes" in traced and "optkit_register_sources" in traced
    assert traced.count("optkit_stage_started") == traced.count("optkit_stage_finished") == 2


def test_a_wrapper_on_a_registration_hook_is_refused_naming_the_plugin():
    class WrapsRegistration:
        __name__ = "wraps_registration"

        @hookimpl(wrapper=True)
        def optkit_register_passes(self, register):
            return (yield)

    host = Host.with_plugins(plugins_for_tests, WrapsRegistration())

    [broken] = host.broken
    assert broken.name == "wraps_registration"
    assert "plugin 'wraps_registration': optkit_register_passes is a wrapper" in broken.error
    assert "identity" in host.passes  # the other plugins keep working
    assert not host.pm.has_plugin("wraps_registration")


def test_a_wrapper_that_raises_is_skipped_and_the_observers_inside_still_run(tmp_path, caplog):
    calls: list[str] = []

    class BrokenBefore:
        __name__ = "broken_before"

        @hookimpl(wrapper=True)
        def optkit_stage_finished(self, result):
            raise ValueError("before the yield")
            yield  # a generator function, as wrappers are

    class BrokenAfter:
        __name__ = "broken_after"

        @hookimpl(wrapper=True)
        def optkit_stage_finished(self, result):
            yield
            raise ValueError("after the yield")

    with caplog.at_level(logging.WARNING):
        _run(Host.with_plugins(plugins_for_tests, Observer(calls), BrokenBefore(), BrokenAfter()), tmp_path, "  - identity")

    assert calls == ["finished baseline", "finished identity"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("plugin 'broken_before' raised in optkit_stage_finished and was skipped: ValueError: before the yield" in w
               for w in warnings) == 2
    assert sum("plugin 'broken_after' raised in optkit_stage_finished and was skipped: ValueError: after the yield" in w
               for w in warnings) == 2
