"""Run folders: where a run writes, never silently over an earlier run (no torch needed).

Before anything runs, the folder is checked: it can be created, a file can be written in it,
and its filesystem has room for what the run will write. Any of these failing is a one-line
error, and nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from optkit.errors import PipelineError

__all__ = ["MIN_FREE_BYTES", "prepare_run_dir", "check_room"]

#: Free space a run needs beyond its estimate (reports, traceback files, small artifacts).
MIN_FREE_BYTES = 16 * 2**20


def prepare_run_dir(folder: Path, overwrite: bool = False, need_bytes: int = 0) -> Path:
    """The run folder to use; a previous run's report is never silently overwritten.

    An earlier run in ``folder`` makes it ``folder-2`` (then ``-3``, ...) unless ``overwrite``,
    which clears that earlier run. A non-empty folder that is not a run folder is refused.

    Args:
        folder: the folder asked for.
        overwrite: replace an earlier run there.
        need_bytes: what the run is expected to write (see :func:`check_room`).

    Raises:
        PipelineError: the folder cannot be created or written to (a read-only filesystem, a
            parent that is a file, a name too long, no permission) or its filesystem has too
            little room; nothing is created or removed then.
    """
    folder = Path(folder)
    try:
        return _prepare(folder, overwrite, need_bytes)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PipelineError(f"output {_shown(folder)}: cannot write there ({reason}); choose another --output") from None


def _prepare(folder: Path, overwrite: bool, need_bytes: int) -> Path:
    if folder.exists() and not folder.is_dir():
        raise PipelineError(f"output {_shown(folder)} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / "report.json").exists():
            raise PipelineError(f"output {_shown(folder)} is not empty and holds no optkit run; choose another --output")
        if overwrite:
            check_room(folder, need_bytes)  # before the earlier run is removed
            shutil.rmtree(folder)
        else:
            n = 2
            while (candidate := folder.with_name(f"{folder.name}-{n}")).exists():
                n += 1
            folder = candidate
    created = _first_missing(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        check_room(folder, need_bytes)
    except BaseException:  # anything, Ctrl-C included: remove what this call made, then re-raise
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)  # only folders this call made, still empty
        raise
    return folder


def check_room(folder: Path, need_bytes: int = 0) -> None:
    """Check that a file can be written in ``folder`` and that its filesystem has room.

    Args:
        folder: an existing folder.
        need_bytes: what will be written there; :data:`MIN_FREE_BYTES` more is required.

    Raises:
        OSError: a file cannot be created there.
        PipelineError: less free space than needed.
    """
    fd, probe = tempfile.mkstemp(prefix=".optkit-write-check-", dir=folder)
    os.close(fd)
    os.unlink(probe)
    free = shutil.disk_usage(folder).free
    need = need_bytes + MIN_FREE_BYTES
    if free < need:
        raise PipelineError(
            f"output {_shown(folder)}: {free / 1e6:,.0f} MB free on its filesystem, and the run needs about "
            f"{need / 1e6:,.0f} MB (the model twice, for model.pt and an export, plus reports); "
            "free some space or choose another --output"
        )


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s path that does not exist yet (``None``: it exists)."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _shown(folder: Path, limit: int = 120) -> str:
    """``folder`` for a message: a path too long to read is shortened in the middle."""
    text = str(folder)
    return text if len(text) <= limit else f"{text[:60]}…{text[-40:]}"
