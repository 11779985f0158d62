"""The public API: ``optkit.__all__``, small and resolvable, is the one surface plugins and library
users import from (the packages re-export nothing; see tests/test_layering.py)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import optkit

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in (ROOT / "optkit").glob("*/__init__.py"))


def _package_all(folder: Path) -> list[str]:
    module = importlib.import_module(f"optkit.{folder.name}")
    return list(getattr(module, "__all__", []))


def test_the_public_api_has_at_most_sixty_names():
    """``optkit.__all__`` plus every package's ``__all__``: what a user may rely on, kept small."""
    total = len(optkit.__all__) + sum(len(_package_all(folder)) for folder in PACKAGES)
    assert total <= 60, total


def test_all_lists_each_export_once_and_every_name_resolves():
    assert len(optkit.__all__) == len(set(optkit.__all__))
    assert set(optkit.__all__) == {*optkit._EXPORTS, "__version__"}
    for name, module in optkit._EXPORTS.items():
        assert getattr(optkit, name) is getattr(importlib.import_module(module), name), name
    assert isinstance(optkit.__version__, str)


def test_type_checkers_see_the_same_names():
    """The ``TYPE_CHECKING`` imports of ``optkit/__init__.py`` (what mypy and IDEs read) match ``_EXPORTS``."""
    tree = ast.parse((ROOT / "optkit" / "__init__.py").read_text(encoding="utf-8"))
    guarded = next(node for node in tree.body if isinstance(node, ast.If))
    seen = {alias.name: node.module for node in guarded.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert seen == optkit._EXPORTS


def test_importing_optkit_imports_no_heavy_library():
    code = "import sys, optkit; print(sorted(m for m in ('torch', 'pydantic', 'pluggy') if m in sys.modules))"
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Registry'"):
        _ = optkit.Registry


def test_run_pipeline_is_public_and_runs_a_pipeline_file(tmp_path):
    """Library use as README shows it: a file path in, the report and its folder out (the installed plugins)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "model: {source: 'python:optkit.testing:tiny_convnet', input_shape: [1, 3, 32, 32]}\n"
        "device: cpu\nmeasure: {latency: false}\npasses: [fuse_bn]\noutput: out\n"
    )
    report, run_dir = optkit.run_pipeline(path, output=tmp_path / "run")
    assert report.status == "ok", report.error
    assert [stage.name for stage in report.stages] == ["baseline", "fuse_bn"]
    assert run_dir == tmp_path / "run" and (run_dir / "report.json").is_file()
    assert list(inspect.signature(optkit.run_pipeline).parameters)[:2] == ["pipeline", "host"]
