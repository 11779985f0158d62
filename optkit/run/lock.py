"""Run-folder ownership: one process at a time writes a run folder.

A run holds an advisory lock (``flock``) on ``<run folder>/.optkit-run.lock`` from before it looks
at the folder until it ends. The file names the holder (PID, host, start time) so that a second
``optkit run`` on the same folder, with or without ``--overwrite``, is refused naming it. The
kernel drops the lock when its process dies, however it dies: a lock file left behind by a killed
run is taken over, and the report says so. (pip's and tox's lock files work the same way, through
``filelock``, which keeps no holder record to name.)
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optkit.errors import PipelineError

__all__ = ["LOCK_NAME", "RunFolderBusy", "RunLock", "acquire_run_lock"]

log = logging.getLogger(__name__)

#: The lock file's name inside a run folder.
LOCK_NAME = ".optkit-run.lock"

#: Bytes of a lock file read for its holder record (a record is about 100 bytes).
_RECORD_LIMIT = 4096


class RunFolderBusy(PipelineError):
    """Another live process holds the run folder's lock (exit 2: nothing was run)."""


@dataclass
class RunLock:
    """The lock a run holds on its folder; :meth:`release` ends it.

    Attributes:
        path: the lock file.
        holder: this process: ``pid``, ``host``, ``started`` (UTC, ISO 8601).
        took_over: the record of an earlier holder that died without releasing the file, else ``None``.
    """

    path: Path
    fd: int
    holder: dict[str, Any]
    took_over: dict[str, Any] | None = None
    released: bool = field(default=False, repr=False)

    def record(self) -> dict[str, Any]:
        """What report.json's ``lock`` says: the lock file, its holder and any stale lock taken over."""
        return {"file": LOCK_NAME, **self.holder, **({"took_over": self.took_over} if self.took_over else {})}

    def release(self) -> None:
        """Remove the lock file and drop the lock (the file goes first, while still held)."""
        if self.released:
            return
        self.released = True
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:  # a folder turned read-only: the lock is dropped all the same
            log.warning("could not remove %s: %s", self.path, exc.strerror or exc)
        os.close(self.fd)


def acquire_run_lock(folder: Path, *, attempts: int = 5) -> RunLock:
    """Take the lock of the existing ``folder`` without waiting.

    Raises:
        RunFolderBusy: a live process holds it; the message names its PID and start time.
        OSError: the lock file cannot be created.
    """
    path = Path(folder) / LOCK_NAME
    for _ in range(attempts):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd)
            os.close(fd)
            raise RunFolderBusy(f"output {folder} is in use by {describe_holder(holder)}") from None
        # The holder before us may have removed the file between our open and our flock: then we
        # lock a file nobody else sees, and try again with the file now at ``path``.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        earlier = _read_record(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        lock = RunLock(path, fd, holder, took_over=earlier or None)
        if earlier:
            log.warning("%s: took over the lock of %s, which ended without releasing it", folder, describe_holder(earlier))
        return lock
    raise RunFolderBusy(f"output {folder}: its lock file keeps being replaced; another optkit run is starting there")


def describe_holder(record: dict[str, Any]) -> str:
    """``optkit run PID 123 on host (started 2026-12-07T01:23:47Z)``, as far as the record says."""
    if not record.get("pid"):
        return "another optkit run that is starting (no holder recorded yet)"
    where = f" on {record['host']}" if record.get("host") else ""
    return f"optkit run PID {record['pid']}{where} (started {record.get('started', '?')})"


def _read_record(fd: int) -> dict[str, Any]:
    """The holder record in a lock file (``{}`` when it is empty or not one)."""
    try:
        record = json.loads(os.pread(fd, _RECORD_LIMIT, 0).decode("utf-8") or "{}")
    except ValueError:  # a half-written or foreign file: no holder to name
        return {}
    return record if isinstance(record, dict) else {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
