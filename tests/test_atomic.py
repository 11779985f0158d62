"""Atomic writes: all or nothing, no temporary files left, the mode a plain write would give."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from optkit.files import atomic_write_text


def test_writes_with_the_mode_of_a_plain_open(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_text(target, "new\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert target.read_text() == "new\n"
    assert (target.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "report.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    atomic_write_text(target, "old\n")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
