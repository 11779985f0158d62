"""Shared fixtures: small pipelines on small inputs, the CLI, hosts with in-process plugins."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from click.testing import CliRunner

from optkit.host.facade import Host

# Two cores, and pytest-xdist runs two workers: one intra-op thread each keeps them from fighting.
torch.set_num_threads(1)


def _has_ultralytics() -> bool:
    return importlib.util.find_spec("ultralytics") is not None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ultralytics-job",
        action="store_true",
        help="the Ultralytics test job: fail unless Ultralytics is installed and its tests ran and passed",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--ultralytics-job") and not _has_ultralytics():
        raise pytest.UsageError("--ultralytics-job: ultralytics is not installed in this environment (make test creates .venv-ultralytics)")
    if not _has_ultralytics():
        # Ultralytics is AGPL and its ultralytics-thop overwrites the thop/ folder optkit depends on,
        # so it lives in a second environment; `make test` runs these tests there.
        skip = pytest.mark.skip(reason="needs Ultralytics, which is not installed here; `make test` runs it in .venv-ultralytics")
        for item in items:
            if "ultralytics" in item.keywords:
                item.add_marker(skip)
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


def _ultralytics_job_without_passes(config: pytest.Config) -> bool:
    """The Ultralytics job (controller process) where no test marked ``ultralytics`` passed."""
    if not config.getoption("--ultralytics-job") or hasattr(config, "workerinput"):
        return False
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    passed = reporter.stats.get("passed", []) if reporter is not None else []
    return not any("ultralytics" in report.keywords for report in passed)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In the Ultralytics job, a run where every Ultralytics test was skipped (or none ran) fails."""
    if exitstatus == 0 and _ultralytics_job_without_passes(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _ultralytics_job_without_passes(config):
        terminalreporter.write_line("ultralytics job failed: no test marked ultralytics passed", red=True)


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory):
    """scikit-learn's digits as an ImageFolder of 32×32 RGB PNGs (train/ and val/), once per worker."""
    from optkit.data.digits import digits_imagefolder

    return digits_imagefolder(tmp_path_factory.mktemp("digits") / "digits32", size=32)


@pytest.fixture
def write_pipeline(tmp_path: Path) -> Callable[..., Path]:
    """Write a pipeline file from dedented YAML text; returns its path (in ``tmp_path``)."""

    def write(text: str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


@pytest.fixture
def host() -> Host:
    """A fresh host with the installed plugins."""
    return Host()


@pytest.fixture
def cli() -> Callable[..., object]:
    """Invoke the ``optkit`` CLI in-process: ``cli("run", "p.yaml")`` returns click's Result."""
    from optkit.cli.commands import cli as command

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(command, [str(a) for a in args], catch_exceptions=False)

    return invoke
