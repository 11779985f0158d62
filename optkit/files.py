"""Files: atomic writes (a reader sees the old file or the new one, never half of one), and
paths given relative to a pipeline file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "overwrite_in_place", "resolve_path"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone already after a successful rename


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def overwrite_in_place(path: Path, data: bytes) -> None:
    """Replace the content of the existing file ``path`` without a temporary file (not atomic).

    The fallback when ``path``'s folder no longer takes new files (it turned read-only) but the
    file itself can still be written.

    Raises:
        OSError: the file cannot be written either, or does not exist.
    """
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()


def resolve_path(path: str | Path, base_dir: Path) -> Path:
    """``path`` with ``~`` expanded, made absolute against ``base_dir`` when it is relative.

    Relative paths in a pipeline file (checkpoints, ``file:`` sources, data folders) are
    relative to the file's own folder, not to the current directory. The result is always
    absolute and normalized (``..`` removed), also when ``base_dir`` itself is relative, so that
    messages name one unambiguous file; symlinks are kept as given.

    Example:
        >>> resolve_path("../data/x.npz", Path("/work/pipelines"))
        PosixPath('/work/data/x.npz')
    """
    p = Path(path).expanduser()
    return Path(os.path.abspath(p if p.is_absolute() else Path(base_dir).expanduser() / p))
