"""Files: atomic writes (a reader sees the old file or the new one, never half of one), and
paths given relative to a pipeline file."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "overwrite_in_place",
    "resolve_path",
    "UnsafeFileError",
    "FileTooLargeError",
    "read_limited",
]

_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


class UnsafeFileError(ValueError):
    """A file optkit will not read: not a regular file, or larger than its limit."""


class FileTooLargeError(UnsafeFileError):
    """A regular file larger than the limit for its kind."""


def read_limited(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (a link to one included), at most ``limit`` of them.

    Opened without blocking (a FIFO would wait for a writer forever) and checked before a byte is
    read, so ``/dev/zero``, a FIFO or a 200 MB file costs nothing.

    Raises:
        FileNotFoundError, IsADirectoryError, OSError: as ``open`` does.
        UnsafeFileError: not a regular file; :class:`FileTooLargeError` when larger than ``limit`` bytes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "a special file")
            raise UnsafeFileError(f"not a regular file ({kind})")
        if info.st_size > limit:
            raise FileTooLargeError(f"{info.st_size:,} bytes, more than the limit of {_size_text(limit)}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)  # never more: the file may grow while it is read
        if len(data) > limit:
            raise FileTooLargeError(f"more than the limit of {_size_text(limit)}")
        return data
    finally:
        os.close(fd)


def _size_text(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit:,} bytes"


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
