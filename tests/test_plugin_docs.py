"""The plugin guide (docs/plugins/) shows code that runs: every example marked with a file path is
that file of the example plugin (whose own tests run it, see test_example_plugin.py), every other
code block parses, and every hook, extension point and module-rule field has its section."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import tomllib
import yaml

from optkit.host import hookspecs
from optkit.models.rules import ModuleRule

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins"
EXAMPLE = ROOT / "examples" / "optkit-example-plugin"
PAGES = sorted(GUIDE.glob("*.md"))
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)
#: Written by the pruning work (hook optkit_register_importances), not part of this guide's checks yet.
ELSEWHERE = {"importance.md"}


def blocks(page: Path) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of ``page``, indentation removed."""
    found = []
    for indent, language, body in FENCE.findall(page.read_text(encoding="utf-8")):
        lines = [line[len(indent):] for line in body.splitlines()]
        found.append((language, "\n".join(lines) + "\n"))
    return found


def marked_file(code: str) -> Path | None:
    """The file a block says it shows (``# examples/.../npz.py`` on its first line), or ``None``."""
    first = code.splitlines()[0]
    match = re.match(r"# (\S+\.(?:py|toml))\b", first)
    return ROOT / match.group(1) if match else None


ALL_BLOCKS = [(page.name, i, language, code) for page in PAGES for i, (language, code) in enumerate(blocks(page))]


def test_the_guide_has_a_page_per_extension_point():
    assert {p.name for p in PAGES} >= {"index.md", "passes.md", "sources.md", "datasets.md", "module-rules.md", "observers.md",
                                       "errors.md", "testing.md"}


@pytest.mark.parametrize(("page", "index", "language", "code"), ALL_BLOCKS, ids=[f"{p}-{i}" for p, i, _, _ in ALL_BLOCKS])
def test_every_code_block_is_the_file_it_names_or_parses(page, index, language, code):
    path = marked_file(code)
    if path is not None:
        assert path.is_file(), f"{page} block {index} names {path}, which does not exist"
        body = code.split("\n", 1)[1]
        assert body in path.read_text(encoding="utf-8"), f"{page} block {index} is not (part of) {path.relative_to(ROOT)}"
    if language == "python":
        ast.parse(code)
    elif language == "yaml":
        yaml.safe_load(code)
    elif language == "toml":
        tomllib.loads(code)


def test_every_extension_point_of_the_example_plugin_is_shown_whole():
    entry_points = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["entry-points"]["optkit"]
    shown = {marked_file(code) for _, _, _, code in ALL_BLOCKS} - {None}
    for module in entry_points.values():
        path = EXAMPLE / "src" / (module.replace(".", "/") + ".py")
        whole = [code for _, _, _, code in ALL_BLOCKS if marked_file(code) == path and code.split("\n", 1)[1] == path.read_text()]
        assert path in shown and whole, f"no page shows {path.relative_to(ROOT)} whole"


def test_every_hook_is_documented_in_the_guide():
    text = "\n".join(page.read_text() for page in PAGES)
    hooks = [name for name in dir(hookspecs) if name.startswith("optkit_")]
    assert hooks and [h for h in hooks if f"`{h}(" not in text] == []


def test_every_module_rule_field_is_in_the_field_table():
    table = "\n".join(line for line in (GUIDE / "module-rules.md").read_text().splitlines() if line.startswith("| `"))
    described = {"class_path", "computes", "subclasses", "same_forward", "note"}  # explained in the prose and the example
    missing = [f.name for f in dataclasses.fields(ModuleRule) if f.name not in described and f"`{f.name}" not in table]
    assert missing == []


def test_links_between_pages_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([\w-]+\.md)(?:#[\w-]+)?\)", page.read_text()):
            assert target in ELSEWHERE or (GUIDE / target).is_file(), f"{page.name} links to {target}"
