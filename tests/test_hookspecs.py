"""Meta-tests: every hook is prefixed, documented in code and in the plugin guide (docs/plugins/), and tested."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import optkit
from optkit.host import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "optkit_spec")]


def plugin_guide() -> str:
    """The plugin guide: its pages under docs/plugins/."""
    pages = sorted((ROOT / "docs" / "plugins").glob("*.md"))
    assert pages, "docs/plugins/ has no pages"
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


def test_the_hooks_are_the_documented_set():
    assert HOOKS == [
        "optkit_register_datasets", "optkit_register_importances", "optkit_register_module_rules", "optkit_register_passes",
        "optkit_register_sources",
        "optkit_stage_finished", "optkit_stage_progress", "optkit_stage_started",
    ]


def test_markers_are_exported_from_the_package():
    assert optkit.hookimpl is hookspecs.hookimpl
    assert hookspecs.hookimpl.project_name == hookspecs.hookspec.project_name == "optkit"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_docstring_documents_every_parameter(hook):
    fn = getattr(hookspecs, hook)
    doc = inspect.getdoc(fn)
    params = list(inspect.signature(fn).parameters)

    assert hook.startswith("optkit_")
    assert doc and doc.splitlines()[0].endswith("."), f"{hook} needs a one-line summary"
    assert [p for p in params if f":param {p}:" not in doc] == [], f"{hook}: undocumented parameters"
    assert ".. versionadded::" in doc
    assert all(fn.__annotations__.get(p) for p in params), f"{hook}: every parameter is typed"


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_are_documented(hook):
    """The plugin guide shows each hook with its exact signature (datasette's meta-test)."""
    signature = f"{hook}({', '.join(inspect.signature(getattr(hookspecs, hook)).parameters)})"
    assert signature in plugin_guide(), f"the plugin guide (docs/plugins/) lacks {signature}"


def test_plugin_hooks_have_tests():
    """Each hook has a ``test_hook_<name>`` test somewhere in tests/ (datasette's meta-test)."""
    tests = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tests |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert [hook for hook in HOOKS if f"test_hook_{hook}" not in tests] == []


def test_guide_names_the_disable_variable_and_the_test_kit():
    guide = plugin_guide()
    for needed in ("[project.entry-points.optkit]", "OPTKIT_DISABLE_PLUGINS", "optkit.testing", "run_pass",
                   "class Options(Pass.Options)", "preserves_outputs", "from optkit import Pass, PassContext, hookimpl"):
        assert needed in guide, needed
