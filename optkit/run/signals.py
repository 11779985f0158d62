"""SIGTERM and SIGINT during a run: both end it the way Ctrl-C does, with the report written.

``timeout``, job schedulers (Slurm, Kubernetes) and ``kill`` send SIGTERM, whose default action
kills the process before it can say so in report.json. While a run lasts, SIGTERM raises
:class:`Terminated` (a ``KeyboardInterrupt``) in the main thread, so every place that records
Ctrl-C records it too. The handlers are put back after each stage, in case a plugin replaced or
ignored them. The exit code is 128 + the signal's number: 143 for SIGTERM, 130 for SIGINT.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["Terminated", "handling_signals", "restore_handlers", "interruption", "exit_code_for"]


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as after Ctrl-C.

    Attributes:
        exit_code: 143 (128 + SIGTERM).
    """

    exit_code = 128 + signal.SIGTERM


#: The handlers of the run in progress: (signal, handler) pairs; empty outside a run.
_installed: list[tuple[int, Any]] = []


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt`` (unless
    SIGINT was ignored when it began, as for a background job); the handlers before it come back after.

    Outside the main thread (where Python delivers signals) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    sigint = before[signal.SIGINT] if before[signal.SIGINT] == signal.SIG_IGN else signal.default_int_handler
    wanted = [(signal.SIGTERM, _on_sigterm), (signal.SIGINT, sigint)]
    _installed[:] = wanted
    restore_handlers()
    try:
        yield
    finally:
        _installed.clear()
        for signum, handler in before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def restore_handlers() -> None:
    """Put the run's handlers back (a plugin may have replaced or ignored them); nothing outside a run."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in _installed:
        if signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)


def interruption(exc: KeyboardInterrupt) -> str:
    """``interrupted (SIGTERM)`` or ``interrupted (Ctrl-C)``: what the report says."""
    return "interrupted (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"


def exit_code_for(messages: Iterable[str | None]) -> int:
    """The exit code of an interrupted run from its errors (the report's and its stages'): 143 after SIGTERM, else 130."""
    sigterm = any(message is not None and message.startswith("interrupted (SIGTERM)") for message in messages)
    return Terminated.exit_code if sigterm else 128 + signal.SIGINT
