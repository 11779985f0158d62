"""Keeping stdout for machine-readable output: what a run prints goes to stderr instead."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
from collections.abc import Iterator

__all__ = ["stdout_to_stderr"]


def _fd(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: an in-memory stream
        return None


def _flush_c_stdio() -> None:
    """Flush C's own stdout buffer (printf, std::cout) so nothing written before is released later."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout inside the block to stderr: Python's ``print`` and, at the
    file-descriptor level, what C code writes (torch's exporter dumps its graph there on failure).

    ``optkit run --json`` keeps stdout for the JSON report alone this way.
    """
    sys.stdout.flush()
    out_fd, err_fd = _fd(sys.stdout), _fd(sys.stderr)
    saved = None
    if out_fd is not None and err_fd is not None and out_fd != err_fd:
        _flush_c_stdio()
        saved = os.dup(out_fd)
        os.dup2(err_fd, out_fd)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        with contextlib.suppress(ValueError, io.UnsupportedOperation):
            sys.stderr.flush()
        if saved is not None and out_fd is not None:
            _flush_c_stdio()
            os.dup2(saved, out_fd)
            os.close(saved)
