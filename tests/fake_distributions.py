"""Fake installed distributions for plugin tests (pytest's testing/test_config.py does the same).

``importlib.metadata.distributions`` is monkeypatched to return the real distributions plus tiny
stand-ins, each with real :class:`importlib.metadata.EntryPoint` objects in the ``optkit`` group,
so the host loads them exactly as it loads installed plugins.
"""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from pathlib import Path

import pytest

from optkit.host.manager import ENTRY_POINT_GROUP

__all__ = ["FakeDistribution", "install_fake_distributions", "write_module"]


class FakeDistribution(importlib.metadata.Distribution):
    """An installed distribution made of two in-memory files: ``METADATA`` and ``entry_points.txt``.

    Args:
        name: distribution name (``metadata["Name"]``).
        version: distribution version.
        entry_points: entry-point name to target, all in the ``optkit`` group.
    """

    def __init__(self, name: str, version: str, entry_points: dict[str, str]) -> None:
        lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        self._files = {
            "METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
            "entry_points.txt": f"[{ENTRY_POINT_GROUP}]\n{lines}",
        }

    def read_text(self, filename: str) -> str | None:
        return self._files.get(filename)

    def locate_file(self, path: str) -> Path:
        raise NotImplementedError("a fake distribution has no files on disk")


def install_fake_distributions(monkeypatch: pytest.MonkeyPatch, *fakes: FakeDistribution) -> None:
    """Make the host see the installed distributions plus ``fakes`` (undone after the test)."""
    real = list(importlib.metadata.distributions())
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [*real, *fakes])


def write_module(monkeypatch: pytest.MonkeyPatch, folder: Path, name: str, source: str) -> None:
    """Write ``name.py`` into ``folder``, put ``folder`` on ``sys.path``, forget ``name`` afterwards."""
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    # Imported during the test; setitem records "absent" so undo removes it again.
    monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, name)
