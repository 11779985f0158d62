"""What libraries warn or log while a stage runs is kept in the stage's details, not printed over the console."""

from __future__ import annotations

import logging
import warnings

from torch import nn

from optkit import Pass, PassContext
from optkit.run.library_output import captured_library_output
from optkit.testing import run_pass


class ChattyLibrary(Pass):
    """Warns and logs as onnxruntime's quantizer and torch's exporters do, and logs a warning of its own."""

    name = "chatty"
    summary = "Call code that warns."
    preserves_outputs = True

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        logging.warning("Please consider to run pre-processing before quantization.")  # onnxruntime: the root logger
        logging.getLogger("onnxruntime.quantization").warning("a library's own logger")
        warnings.warn("TracerWarning-like notice", UserWarning, stacklevel=1)
        ctx.logger.warning("the pass's own warning")
        return model


def test_library_warnings_go_to_the_stage_details_not_the_console(tmp_path, capfd):
    run = run_pass(ChattyLibrary, tmp_path=tmp_path, measure={"warmup": 0, "iters": 1, "latency": False})

    kept = run.stage["details"]["library_warnings"]  # (under pytest, also thop's DeprecationWarning, which pytest shows)
    assert {
        "root: Please consider to run pre-processing before quantization.",
        "onnxruntime.quantization: a library's own logger",
        "UserWarning: TracerWarning-like notice",
    } <= set(kept)
    assert not any("the pass's own warning" in line for line in kept)  # optkit's own log is no library's
    printed = capfd.readouterr()
    assert "pre-processing" not in printed.err + printed.out and "TracerWarning-like" not in printed.err + printed.out


def test_the_root_logger_gets_no_console_handler_and_optkit_warnings_still_print(capfd):
    root = logging.getLogger()
    before, saved = list(root.handlers), root.handlers[:]
    root.handlers.clear()  # as in the CLI: nothing configured, so logging.warning() would call basicConfig
    try:
        messages: list[str] = []
        with captured_library_output(messages):
            logging.warning("from a library")
            logging.getLogger("optkit.stage.x").warning("from optkit")
        assert root.handlers == [] and messages == ["root: from a library"]
    finally:
        root.handlers[:] = saved
    err = capfd.readouterr().err
    assert "from optkit" in err and "from a library" not in err
    assert root.handlers == before
