"""Plugins that misbehave the way third-party code does: they write outside their folder, print,
colour their errors, break observers, fail to load models. The host must stay whole.

Registered in-process with ``Host.with_plugins(hostile_plugins)`` or through the fake
distribution ``HOSTILE`` (entry point ``hostile``) for command-line tests.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

import optkit.files
from optkit import OnnxArtifact, Pass, PassContext, hookimpl
from optkit.errors import StageError

__all__ = ["WritesArtifactAt", "ListsOutside", "Prints", "Colored", "RefusesPolitely", "GoesReadOnly",
           "Unpicklable", "Sleeps", "ReadsBaseline", "ZeroesBaseline", "SlowsBaseline", "SignalsItself", "IgnoresSigint", "ReturnsOnnxAt", "DeletesEarlierArtifacts", "restore_writes", "RaisingObserver", "SOURCE_ERROR"]

SOURCE_ERROR = "the weights server is down"


class WritesArtifactAt(Pass):
    name = "writes_artifact_at"
    summary = "Write a file at ctx.artifact_path(path)."

    class Options(Pass.Options):
        path: str = Field("note.txt", description="What the pass gives artifact_path.")

    options: Options

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        ctx.artifact_path(self.options.path).write_text("written\n")
        return model


class ListsOutside(Pass):
    name = "lists_outside"
    summary = "Add a path outside the run folder to ctx.artifacts by hand."

    class Options(Pass.Options):
        path: str = Field(description="The path listed.")

    options: Options

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        ctx.artifacts.append(self.options.path)
        return model


class Prints(Pass):
    name = "prints"
    summary = "Print to stdout from Python and from the file descriptor, as torch's C++ code does."

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        print("PRINTED BY A PASS")
        sys.stdout.flush()
        os.write(1, b"WRITTEN TO FD 1 BY C CODE\n")
        return model


class Colored(Pass):
    name = "colored"
    summary = "Fail with an error coloured by ANSI escapes."

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        raise RuntimeError("\x1b[96mshape mismatch\x1b[0m in \x1b[1mGraph\x1b[0m")


class RefusesPolitely(Pass):
    name = "refuses_politely"
    summary = "Fail with an optkit StageError."

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        raise StageError("this model is not for me")


_REAL_MKSTEMP = tempfile.mkstemp


def _read_only(*args: object, **kwargs: object) -> None:
    raise OSError(30, "Read-only file system")


def restore_writes() -> None:
    """Undo :class:`GoesReadOnly` (tests call it when they end)."""
    tempfile.mkstemp = _REAL_MKSTEMP
    optkit.files.__dict__.pop("open", None)


class GoesReadOnly(Pass):
    """Makes every later write fail as on a filesystem remounted read-only (root ignores chmod).

    New files cannot be created (``tempfile.mkstemp`` fails); with ``in_place: false`` existing
    files cannot be rewritten either.
    """

    name = "goes_read_only"
    summary = "Turn the run folder read-only."

    class Options(Pass.Options):
        in_place: bool = Field(True, description="Existing files can still be rewritten in place.")

    options: Options

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        tempfile.mkstemp = _read_only
        if not self.options.in_place:
            optkit.files.open = _read_only  # what overwrite_in_place opens files with
        return model


class Unpicklable(Pass):
    name = "unpicklable"
    summary = "Give the model an attribute pickle cannot save."

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        model.transform = lambda x: x
        return model


class Sleeps(Pass):
    """Writes an artifact, touches ``marker`` (so a test knows the run is mid-stage), then sleeps
    ``seconds``, or less once the file ``until`` exists."""

    name = "sleeps"
    summary = "Sleep in the middle of a stage."

    class Options(Pass.Options):
        seconds: float = Field(2.0, description="How long.")
        marker: str = Field("", description="A file created once the stage is under way.")
        until: str = Field("", description="Stop sleeping once this file exists.")

    options: Options

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        ctx.artifact_path("mine.txt").write_text(f"{os.getpid()}\n")
        if self.options.marker:
            Path(self.options.marker).write_text(f"{os.getpid()}\n")
        deadline = time.monotonic() + self.options.seconds
        while time.monotonic() < deadline and not (self.options.until and Path(self.options.until).exists()):
            time.sleep(0.05)
        return model


class ReadsBaseline(Pass):
    """Calls ``ctx.baseline_model`` as a distilling pass does, and changes nothing."""

    name = "reads_baseline"
    summary = "Read the baseline model."
    needs_baseline_model = True

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        with torch.inference_mode():
            ctx.details["teacher_mean"] = float(ctx.baseline_model(ctx.example_input).mean())
        return model


class ZeroesBaseline(Pass):
    name = "zeroes_baseline"
    summary = "Zero the weights of ctx.baseline_model (what no pass may do)."
    needs_baseline_model = True

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        with torch.no_grad():
            for parameter in ctx.baseline_model.parameters():
                parameter.zero_()
        return model


class SlowsBaseline(Pass):
    name = "slows_baseline"
    summary = "Wrap the forward of ctx.baseline_model in a sleep (what no pass may do)."
    needs_baseline_model = True

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        baseline = ctx.baseline_model
        forward = baseline.forward

        def slow(*args, **kwargs):
            time.sleep(0.01)
            return forward(*args, **kwargs)

        baseline.forward = slow
        return model


class SignalsItself(Pass):
    """Sends its own process a signal, as ``timeout`` or a job scheduler does mid-stage."""

    name = "signals_itself"
    summary = "Send this process SIGTERM (or another signal)."

    class Options(Pass.Options):
        signal: str = Field("SIGTERM", description="The signal's name.")

    options: Options

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        os.kill(os.getpid(), getattr(signal, self.options.signal))
        time.sleep(5)  # the handler interrupts this
        return model


class IgnoresSigint(Pass):
    name = "ignores_sigint"
    summary = "Ignore SIGINT and SIGTERM from now on, as some libraries do."

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return model


class ReturnsOnnxAt(Pass):
    """Returns an ``OnnxArtifact`` at a path of its choosing, not through ctx.artifact_path."""

    name = "returns_onnx_at"
    summary = "Return an OnnxArtifact at a given path."

    class Options(Pass.Options):
        path: str = Field(description="The artifact's path; relative paths are under the run folder.")

    options: Options

    def apply(self, model: nn.Module, ctx: PassContext) -> OnnxArtifact:
        path = Path(self.options.path)
        if not path.is_absolute():
            path = ctx.output_dir.parent.parent / path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not onnx")
        return OnnxArtifact(path=path, source_model=model)


class DeletesEarlierArtifacts(Pass):
    name = "deletes_earlier_artifacts"
    summary = "Delete the files earlier stages wrote."

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        for path in ctx.output_dir.parent.rglob("*"):
            if path.is_file():
                path.unlink()
        return model


@hookimpl
def optkit_register_passes(register):
    for pass_cls in (WritesArtifactAt, ListsOutside, Prints, Colored, RefusesPolitely, GoesReadOnly, Unpicklable, Sleeps,
                     ReadsBaseline, ZeroesBaseline, SlowsBaseline, SignalsItself, IgnoresSigint,
                     ReturnsOnnxAt, DeletesEarlierArtifacts):
        register(pass_cls)


@hookimpl
def optkit_register_sources(register):
    def load_boom(request):
        raise RuntimeError(SOURCE_ERROR)

    register("boom", load_boom)


class RaisingObserver:
    """An observer plugin whose stage hooks raise."""

    @hookimpl
    def optkit_stage_started(self, stage, index, run):
        raise RuntimeError("observer broke on start")

    @hookimpl
    def optkit_stage_finished(self, result, run):
        raise ValueError("observer broke on finish")
