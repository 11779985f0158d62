"""The ``strip_dropout`` pass: dropout layers do nothing at inference, so replace them.

Dropout is the identity in eval mode, but the modules stay in the graph: exporters and
compilers still see them, and module-walking tools have to step over them. Replacing each with
``nn.Identity`` leaves the outputs bit-for-bit equal (``preserves_outputs = True``: the host
fails the stage otherwise).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from optkit import Pass, PassContext, hookimpl

__all__ = ["StripDropout", "DROPOUT_TYPES"]

#: The dropout modules of ``torch.nn``, by class name.
DROPOUT_TYPES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
}

DropoutKind = Literal["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"]


class StripDropout(Pass):
    """Replace dropout modules with ``nn.Identity``."""

    name = "strip_dropout"
    summary = "Replace dropout layers (no-ops at inference) with nn.Identity."
    preserves_outputs = True

    class Options(Pass.Options):  # unknown options are errors (extra="forbid" is inherited)
        kinds: list[DropoutKind] = Field(
            default_factory=lambda: list(DROPOUT_TYPES),
            description="Dropout classes to replace (default: all of torch.nn's).",
        )

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        """Replace every dropout of the selected kinds, in place.

        Args:
            model: the model (eval mode).
            ctx: ``details`` receives ``replaced`` (module names) and ``count``.

        Returns:
            The same model, without the selected dropout modules.
        """
        kinds = tuple(DROPOUT_TYPES[kind] for kind in self.options.kinds)
        # Exact types: a subclass of a dropout may do more than drop.
        replaced = [name for name, module in model.named_modules() if name and type(module) in kinds]
        for name in replaced:
            model.set_submodule(name, nn.Identity())
        ctx.details["replaced"] = replaced
        ctx.details["count"] = len(replaced)
        ctx.logger.info("replaced %d dropout module(s)", len(replaced))
        return model


@hookimpl
def optkit_register_passes(register):
    register(StripDropout)
