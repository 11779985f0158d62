"""End to end: the example third-party distribution, built and installed with pip, used by optkit:
every extension point (a pass, a model source, a dataset source, a module rule, an importance criterion, an observer) and
the distribution's own tests, which use optkit.testing.

It is installed into a temporary ``--target`` folder put on ``PYTHONPATH`` of subprocesses, never
into the shared virtualenv, so tests running in parallel see nothing of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# A pip build and five fresh interpreters importing torch: ~20 s on two quiet cores.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "optkit-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """Environment variables for a subprocess that sees the installed example plugin."""
    work = tmp_path_factory.mktemp("example-plugin")
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=240,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT / "tests")])}
    env.pop("OPTKIT_DISABLE_PLUGINS", None)
    return env


def optkit(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "optkit.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=240)


def test_installed_plugin_is_listed_with_its_distribution(installed):
    done = optkit(installed, "passes", "--json")

    assert done.returncode == 0, done.stderr
    [row] = [r for r in json.loads(done.stdout)["passes"] if r["name"] == "strip_dropout"]
    assert row == {"name": "strip_dropout", "summary": "Replace dropout layers (no-ops at inference) with nn.Identity.",
                   "preserves_outputs": True, "plugin": "strip_dropout",
                   "distribution": "optkit-example-plugin", "version": "0.1.0"}


def test_pipeline_using_the_plugin_runs(installed, tmp_path):
    (tmp_path / "pipeline.yaml").write_text(
        "model:\n"
        "  source: python:optkit.testing:tiny_convnet\n"
        "  kwargs: {dropout: 0.5}\n"
        "  input_shape: [2, 3, 64, 64]\n"
        "device: cpu\n"
        "measure: {warmup: 1, iters: 3}\n"
        "passes:\n"
        "  - strip_dropout: {kinds: [Dropout]}\n"
    )
    assert optkit(installed, "validate", "pipeline.yaml", cwd=tmp_path).returncode == 0

    done = optkit(installed, "run", "pipeline.yaml", "--json", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    stage = json.loads(done.stdout)["stages"][1]
    assert (stage["name"], stage["status"], stage["details"]) == ("strip_dropout", "ok", {"replaced": ["8"], "count": 1})
    assert stage["metrics"]["drift"]["max_abs"] == 0.0


def test_its_sources_are_listed_with_their_docstring_summaries(installed):
    done = optkit(installed, "sources", "--json")

    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    rows = {row["scheme"]: row for row in listed["sources"] + listed["datasets"]}
    assert (rows["example"]["summary"], rows["example"]["distribution"]) == ("Small models of the example plugin (example:scaled_stem).",
                                                                             "optkit-example-plugin")
    assert rows["npz"]["summary"] == "Arrays x (inputs) and y (labels) of a NumPy .npz file."


def test_disabling_the_plugin_by_distribution_name(installed, tmp_path):
    env = {**installed, "OPTKIT_DISABLE_PLUGINS": "optkit-example-plugin"}
    names = [r["name"] for r in json.loads(optkit(env, "passes", "--json").stdout)["passes"]]
    assert "strip_dropout" not in names


def test_the_plugin_own_tests_pass_with_optkit_testing(installed, tmp_path):
    tests = tmp_path / "tests"
    shutil.copytree(EXAMPLE / "tests", tests)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-W", "ignore::DeprecationWarning",
         str(tests)],
        env=installed, cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "15 passed" in done.stdout
