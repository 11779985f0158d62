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
from optkit.run.lock import LOCK_NAME, RunLock, acquire_run_lock

__all__ = ["MIN_FREE_BYTES", "prepare_run_dir", "claim_run_dir", "check_room"]

#: Free space a run needs beyond its estimate (reports, traceback files, small artifacts).
MIN_FREE_BYTES = 16 * 2**20


def prepare_run_dir(folder: Path, overwrite: bool = False, need_bytes: int = 0) -> Path:
    """The run folder to use, checked as :func:`claim_run_dir` does, without keeping its lock."""
    run_dir, lock = claim_run_dir(folder, overwrite, need_bytes)
    lock.release()
    return run_dir


def claim_run_dir(folder: Path, overwrite: bool = False, need_bytes: int = 0) -> tuple[Path, RunLock]:
    """The run folder to use, and its lock (held until released); a previous run's report is never silently overwritten.

    An earlier run in ``folder`` makes it ``folder-2`` (then ``-3``, ...) unless ``overwrite``,
    which clears that earlier run. A non-empty folder that is not a run folder is refused, and so
    is a folder another live run holds (see :mod:`optkit.run.lock`), with or without ``overwrite``.

    Args:
        folder: the folder asked for.
        overwrite: replace an earlier run there.
        need_bytes: what the run is expected to write (see :func:`check_room`).

    Raises:
        RunFolderBusy: another run holds the folder; its PID and start time are named.
        PipelineError: the folder cannot be created or written to (a read-only filesystem, a
            parent that is a file, a name too long, no permission) or its filesystem has too
            little room; nothing is created or removed then.
    """
    folder = Path(folder)
    try:
        return _claim(folder, overwrite, need_bytes)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PipelineError(f"output {_shown(folder)}: cannot write there ({reason}); choose another --output") from None


def _claim(folder: Path, overwrite: bool, need_bytes: int) -> tuple[Path, RunLock]:
    if folder.exists() and not folder.is_dir():
        raise PipelineError(f"output {_shown(folder)} exists and is not a folder")
    if not _is_run_folder(folder) and folder.is_dir() and any(folder.iterdir()):
        raise _not_a_run_folder(folder)
    created = _first_missing(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = acquire_run_lock(folder)  # before anything in the folder is looked at: another run may be starting there
    try:
        if any(p.name != LOCK_NAME for p in folder.iterdir()):
            if not (folder / "report.json").exists():
                raise _not_a_run_folder(folder)
            if overwrite:
                check_room(folder, need_bytes)  # before the earlier run is removed
                _clear(folder)
            else:
                lock.release()
                folder, lock, created = _next_free(folder)
        check_room(folder, need_bytes)
    except BaseException:  # anything, Ctrl-C included: undo what this call made, then re-raise
        lock.release()
        _remove_empty(folder, created)  # only folders this call made, and only while empty
        raise
    return folder, lock


def _is_run_folder(folder: Path) -> bool:
    return (folder / "report.json").exists() or (folder / LOCK_NAME).exists()


def _not_a_run_folder(folder: Path) -> PipelineError:
    return PipelineError(f"output {_shown(folder)} is not empty and holds no optkit run; choose another --output")


def _next_free(folder: Path) -> tuple[Path, RunLock, Path]:
    """``folder-2`` (then ``-3``, ...): the first that this process creates itself, locked."""
    n = 2
    while True:
        candidate = folder.with_name(f"{folder.name}-{n}")
        n += 1
        try:
            candidate.mkdir()  # exclusive: two runs choosing at once never share a candidate
        except FileExistsError:
            continue
        return candidate, acquire_run_lock(candidate), candidate


def _clear(folder: Path) -> None:
    """Remove everything in ``folder`` but its lock file (an earlier run, not running: the lock says so)."""
    for entry in folder.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _remove_empty(folder: Path, created: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``created`` while they are empty (another run's files stay)."""
    if created is None:
        return
    for candidate in (folder, *folder.parents):
        try:
            candidate.rmdir()
        except OSError:  # not empty (another run started there) or already gone
            return
        if candidate == created:
            return


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
