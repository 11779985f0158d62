"""Keep what libraries print while a stage runs out of the console, in the stage's report instead.

onnxruntime's quantizer calls ``logging.warning`` on the root logger ("Please consider to run
pre-processing before quantization"), which also installs a console handler on the root logger
for the rest of the process; torch and onnx raise ``UserWarning``s. Neither is the user's to act
on in the middle of a progress display. Both are kept, one line each, for ``details.library_warnings``
and the debug log.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["captured_library_output"]

log = logging.getLogger(__name__)

#: Loggers of optkit and its standard plugins: their records are the run's own and reach the console as before.
_OWN_LOGGERS = ("optkit", "optkit_plugins")


class _LibraryRecords(logging.Handler):
    """Keeps the WARNING-and-above records of other libraries; hands optkit's own to the handler of last resort."""

    def __init__(self, messages: list[str], root_had_handlers: bool):
        super().__init__(logging.WARNING)
        self.messages = messages
        self.root_had_handlers = root_had_handlers

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in _OWN_LOGGERS:
            # With this handler on the root logger, logging no longer falls back to its handler of
            # last resort: do it here, so optkit's own warnings print as they do without it.
            last_resort = logging.lastResort
            if not self.root_had_handlers and last_resort is not None and record.levelno >= last_resort.level:
                last_resort.handle(record)
            return
        _keep(self.messages, f"{record.name}: {record.getMessage().strip()}")


def _keep(messages: list[str], line: str) -> None:
    line = " ".join(line.split())
    if line not in messages:
        messages.append(line)


@contextlib.contextmanager
def captured_library_output(messages: list[str]) -> Iterator[None]:
    """Record warnings and other libraries' log records (WARNING and above) instead of printing them.

    Args:
        messages: where the captured lines are appended, each once: ``Category: message`` for a
            warning, ``logger: message`` for a log record (also when the block raises).
    """
    root = logging.getLogger()
    handler = _LibraryRecords(messages, root_had_handlers=bool(root.handlers))
    root.addHandler(handler)  # also keeps logging.warning() from installing a console handler (basicConfig)
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield
    finally:
        root.removeHandler(handler)
        for warning in caught:
            _keep(messages, f"{warning.category.__name__}: {warning.message}")
        for line in messages:
            log.debug("library output: %s", line)
