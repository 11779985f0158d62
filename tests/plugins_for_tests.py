"""In-process test plugins: a tiny model and small passes that do one known thing each.

Registered with ``Host.with_plugins(plugins_for_tests)``; the model is reached from pipeline
files as ``python:plugins_for_tests:tiny_net`` (``tests/`` is on ``sys.path`` under pytest).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from optkit import OnnxArtifact, Pass, PassContext, hookimpl

__all__ = [
    "TINY_PIPELINE",
    "DIGITS_PIPELINE",
    "tiny_net",
    "Identity",
    "Scale",
    "Raises",
    "Drifts",
    "Interrupts",
    "WritesArtifact",
    "ReturnsNothing",
    "ReadsCalibration",
    "SeesArtifact",
    "ReadsOnnx",
    "ClaimsOnnx",
    "StageRecorder",
    "labeled_noise",
    "unlabeled_noise",
    "NoiseDatasets",
]

#: A pipeline on the tiny model, quick to measure; format it with the ``passes`` block.
TINY_PIPELINE = """\
model:
  source: python:plugins_for_tests:tiny_net
  input_shape: [2, 3, 64, 64]
device: cpu
measure: {{warmup: 1, iters: 3}}
passes:
{passes}
"""

#: A pipeline on the trained digits model; format it with ``batch`` (of input_shape), ``measure``
#: (more keys of the measure: mapping, after a comma), ``data`` (the lines under data:) and ``passes``.
DIGITS_PIPELINE = """\
model:
  source: python:optkit.testing:digits_cnn
  kwargs: {{pretrained: true}}
  input_shape: [{batch}, 3, 32, 32]
device: cpu
measure: {{warmup: 1, iters: 2, flops: false{measure}}}
data:
{data}
passes:
{passes}
"""


def tiny_net(num_classes: int = 10) -> nn.Module:
    """Conv-BN-ReLU, pooled, then a classifier: small, deterministic, has logits for top-1."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


class Identity(Pass):
    name = "identity"
    summary = "Return the model unchanged."
    preserves_outputs = True

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        ctx.details["touched"] = 0
        return model


class Scale(Pass):
    """Multiplies the logits by ``factor``; typed options for the validation tests."""

    name = "scale"
    summary = "Multiply the outputs by a factor."

    class Options(Pass.Options):
        factor: float = Field(2.0, description="Output multiplier.")
        mode: Literal["outputs", "weights"] = "outputs"
        layers: list[int] = Field(default_factory=list)

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        ctx.details["factor"] = self.options.factor
        return nn.Sequential(model, _Multiply(self.options.factor))


class _Multiply(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class Raises(Pass):
    name = "raises"
    summary = "Fail with a RuntimeError."

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        raise RuntimeError("boom from the raises pass")


class Drifts(Pass):
    """Claims to preserve outputs but shifts them by 0.5: the runner must fail the stage."""

    name = "drifts"
    summary = "Claim to preserve outputs, then shift them."
    preserves_outputs = True

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        with torch.no_grad():
            model[-1].bias += 0.5
        return model


class Interrupts(Pass):
    name = "interrupts"
    summary = "Raise KeyboardInterrupt, as Ctrl-C during a pass does."

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        raise KeyboardInterrupt


class WritesArtifact(Pass):
    name = "writes_artifact"
    summary = "Write a small text file as the stage's artifact."

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        ctx.artifact_path("note.txt").write_text("written by writes_artifact\n")
        return model


class ReturnsNothing(Pass):
    name = "returns_nothing"
    summary = "Forget to return the model."

    def apply(self, model: nn.Module, ctx: PassContext) -> None:
        model.eval()


class ReadsCalibration(Pass):
    """Reads ``ctx.data.calibration`` as a calibrating pass would, and reports what it saw."""

    name = "reads_calibration"
    summary = "Count the calibration batches and samples."
    preserves_outputs = True

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        batches, labels, devices, shapes = 0, [], set(), set()
        for inputs, targets in ctx.require_data("calibration"):
            batches += 1
            labels += targets.tolist()
            devices.add(str(inputs.device))
            shapes.add(tuple(inputs.shape[1:]))
        ctx.details.update(batches=batches, samples=len(labels), labels=sorted(set(labels)),
                           devices=sorted(devices), shapes=sorted(shapes))
        return model


class SeesArtifact(Pass):
    """Declares nothing and reports what ``ctx.artifact`` holds: the runner's carry-forward, seen from a pass."""

    name = "sees_artifact"
    summary = "Report the artifact the stage before left, if any."

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        ctx.details["artifact"] = None if ctx.artifact is None else ctx.artifact.path.name
        return model


class ReadsOnnx(SeesArtifact):
    """A third-party consumer of an ONNX artifact (the runner hands it one or fails the stage):
    reports the file it got, returns the module."""

    name = "reads_onnx"
    summary = "Read the ONNX model of the stage before."
    consumes = OnnxArtifact


class ClaimsOnnx(Pass):
    """Declares that it produces an ONNX artifact, then returns the module: the runner must refuse it."""

    name = "mislabels_onnx"
    summary = "Declare an ONNX artifact, return a module."
    produces = OnnxArtifact

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        return model


@hookimpl
def optkit_register_passes(register):
    for pass_cls in (Identity, Scale, Raises, Drifts, Interrupts, WritesArtifact, ReturnsNothing, ReadsCalibration,
                     SeesArtifact, ReadsOnnx, ClaimsOnnx):
        register(pass_cls)


def labeled_noise(n: int = 20, classes: int = 10, size: int = 64) -> torch.utils.data.TensorDataset:
    """``n`` seeded random ``[3, size, size]`` images with labels ``i % classes`` (a python: dataset)."""
    generator = torch.Generator().manual_seed(1)
    return torch.utils.data.TensorDataset(torch.rand(n, 3, size, size, generator=generator), torch.arange(n) % classes)


def unlabeled_noise(n: int = 20, size: int = 64) -> list[torch.Tensor]:
    """``n`` seeded random images without labels: a list is a map-style dataset."""
    generator = torch.Generator().manual_seed(2)
    return list(torch.rand(n, 3, size, size, generator=generator))


class NoiseDatasets:
    """A dataset-source plugin: ``noise:labeled`` and ``noise:unlabeled``, with the entry's kwargs."""

    @hookimpl
    def optkit_register_datasets(self, register):
        def load_noise(request):
            factory = {"labeled": labeled_noise, "unlabeled": unlabeled_noise}[request.target]
            request.details["generator"] = request.target
            return factory(**request.spec.kwargs)

        register("noise", load_noise)


class StageRecorder:
    """An observer plugin: records every stage hook call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str]] = []

    @hookimpl
    def optkit_stage_started(self, stage, index, run):
        self.calls.append(("started", stage, index, "running"))

    @hookimpl
    def optkit_stage_finished(self, result, run):
        self.calls.append(("finished", result.name, result.index, result.status))


def nonfinite_noise(n: int = 8, size: int = 64) -> torch.utils.data.TensorDataset:
    """:func:`labeled_noise` whose samples 1 and 3 hold NaN and inf pixels (a broken decoder's output)."""
    images, labels = labeled_noise(n, size=size).tensors
    images = images.clone()
    images[1, 0, 0, 0] = float("nan")
    images[3, 2, 5, 5] = float("inf")
    return torch.utils.data.TensorDataset(images, labels)
