"""Every how-to recipe in docs/how-to runs, block by block, in a fresh folder.

A recipe block is a fenced block preceded by a marker the rendered page does not show:
``<!-- recipe: file NAME -->`` writes the block to NAME, ``<!-- recipe: run -->`` runs a bash block
(or a python block with this Python), ``<!-- recipe: not run: REASON -->`` shows a command that is not
run, for the reason given. ``<!-- recipe: ultralytics -->`` marks a page that needs Ultralytics.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HOW_TO = Path(__file__).resolve().parents[1] / "docs" / "how-to"
MARKER = re.compile(r"^<!-- recipe: (?P<spec>.*?) -->$")
FENCE = re.compile(r"^```(?P<lang>\w+)")


@dataclass
class Block:
    """One fenced block of a recipe and what to do with it."""

    action: str  # "file", "run" or "not run"
    lang: str
    text: str
    line: int
    target: str = ""


def parse_recipe(path: Path) -> tuple[list[Block], set[str]]:
    """The blocks of a how-to page, in order, and its page-level flags (``ultralytics``).

    Every fenced block must carry a marker: a block that is neither run nor written would be a
    recipe step nothing checks.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, flags, pending, i = [], set(), None, 0
    while i < len(lines):
        if m := MARKER.match(lines[i]):
            spec = m.group("spec")
            if spec == "ultralytics":
                flags.add(spec)
            else:
                pending = (spec, i + 1)
            i += 1
            continue
        if m := FENCE.match(lines[i]):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if pending is None:
                raise AssertionError(f"{path.name}:{i + 1}: a fenced block without a recipe marker")
            spec, line = pending
            action, _, target = spec.partition(" ")
            if spec.startswith("not run:"):
                action, target = "not run", spec.split(":", 1)[1].strip()
            elif action not in ("file", "run"):
                raise AssertionError(f"{path.name}:{line}: unknown recipe marker {spec!r}")
            blocks.append(Block(action, m.group("lang"), "\n".join(lines[i + 1:end]) + "\n", i + 1, target))
            pending, i = None, end + 1
            continue
        if lines[i].strip() and pending is not None:
            raise AssertionError(f"{path.name}:{pending[1]}: a recipe marker not followed by a fenced block")
        i += 1
    return blocks, flags


def recipe_pages() -> list:
    params = []
    for path in sorted(HOW_TO.glob("*.md")):
        blocks, flags = parse_recipe(path)
        if not blocks:
            continue
        marks = [pytest.mark.ultralytics] if "ultralytics" in flags else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


def test_every_how_to_page_but_the_index_is_a_recipe() -> None:
    pages = {p.stem for p in HOW_TO.glob("*.md")} - {"index"}
    assert pages and pages == {p.id for p in recipe_pages()}
    for path in HOW_TO.glob("*.md"):
        blocks, _ = parse_recipe(path)
        assert path.stem == "index" or any(b.action == "run" for b in blocks), f"{path.name} runs nothing"


@pytest.fixture
def recipe_dir(tmp_path: Path, digits: Path) -> Path:
    """A fresh folder whose data/digits already holds the data set the recipes write (written once a session)."""
    (tmp_path / "data").mkdir()
    shutil.copytree(digits.root, tmp_path / "data" / "digits")
    return tmp_path


@pytest.mark.parametrize("page", recipe_pages())
def test_recipe_runs(page: Path, recipe_dir: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1", "PYTHONPATH": str(recipe_dir)}
    blocks, _ = parse_recipe(page)
    for block in blocks:
        where = f"{page.name}:{block.line}"
        if block.action == "file":
            (recipe_dir / block.target).write_text(block.text, encoding="utf-8")
            continue
        if block.action == "not run":
            assert block.target, f"{where}: say why the block is not run"
            continue
        if block.lang == "bash":
            command = ["bash", "-euo", "pipefail", "-c", block.text]
        elif block.lang == "python":
            command = [sys.executable, "-c", block.text]
        else:
            raise AssertionError(f"{where}: cannot run a {block.lang} block")
        done = subprocess.run(command, cwd=recipe_dir, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{where} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
