"""A model source: ``example:NAME`` builds one of the small models below.

``model.source: example:scaled_stem`` in a pipeline calls :func:`load_example` with a
``SourceRequest``; ``model.kwargs`` are the builder's keyword arguments.
"""

from __future__ import annotations

import torch
from torch import nn

from optkit import hookimpl
from optkit import PipelineError, SourceRequest, did_you_mean
from optkit_example_plugin.scaled_conv import ScaledConv

__all__ = ["MODELS", "load_example", "scaled_stem"]


def scaled_stem(num_classes: int = 10, width: int = 8, randomize: bool = False) -> nn.Module:
    """ScaledConv -> BatchNorm -> ReLU, twice, then a linear head (eval mode).

    Args:
        num_classes: outputs of the head.
        width: channels of the first ScaledConv (the second has twice as many).
        randomize: give every scale and BatchNorm statistic a value away from its initial one, as
            training would, so that folding them changes the weights visibly.
    """
    model = nn.Sequential(
        ScaledConv(3, width), nn.BatchNorm2d(width), nn.ReLU(),
        ScaledConv(width, 2 * width), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )
    if randomize:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, ScaledConv):
                    module.scale.uniform_(0.5, 2.0)
                elif isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.5, 0.5)
    return model.eval()


#: What ``example:NAME`` builds.
MODELS = {"scaled_stem": scaled_stem}


def load_example(request: SourceRequest) -> nn.Module:
    """Small models of the example plugin (example:scaled_stem)."""
    builder = MODELS.get(request.target)
    if builder is None:  # the user's input is wrong: PipelineError, one line (exit 2)
        raise PipelineError(f"no example model {request.target!r}{did_you_mean(request.target, MODELS)}; known: {', '.join(MODELS)}")
    try:
        model = builder(**request.spec.kwargs)
    except TypeError as exc:  # an unknown keyword in model.kwargs is the user's input too
        raise PipelineError(f"model.kwargs: {exc}") from exc
    request.details["source"] = {"example": request.target}  # lands in the baseline's details
    return model


@hookimpl
def optkit_register_sources(register):
    register("example", load_example)
