"""Shared fixtures: small pipelines on small inputs, the CLI, hosts with in-process plugins."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable

import pytest
import torch
from click.testing import CliRunner

from optkit.host import Host

# Two cores, and pytest-xdist runs two workers: one intra-op thread each keeps them from fighting.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory):
    """scikit-learn's digits as an ImageFolder of 32×32 RGB PNGs (train/ and val/), once per worker."""
    from optkit.data import digits_imagefolder

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
    from optkit.cli import cli as command

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(command, [str(a) for a in args], catch_exceptions=False)

    return invoke
