"""The ``fuse_bn`` pass (see :mod:`optkit_plugins.fuse_bn.fusion` for how pairs are proven and folded)."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from optkit import Pass, PassContext, hookimpl
from optkit_plugins.fuse_bn.fusion import fuse_batchnorm

__all__ = ["FuseBatchNorm", "optkit_register_passes"]


class FuseBatchNorm(Pass):
    """Fold BatchNorm into the Conv, ConvTranspose or Linear layer before it (outputs unchanged)."""

    name = "fuse_bn"
    summary = "Fold BatchNorm into the preceding Conv/ConvTranspose/Linear layer (exact; fx graphs, probe fallback, module rules)."
    preserves_outputs = True

    class Options(Pass.Options):
        """Options of ``fuse_bn``."""

        probe: bool = Field(
            True,
            description="Also fuse pairs inside modules that do not trace, when a dataflow probe on the "
            "example input shows the BatchNorm reads exactly the layer's output and nothing else does.",
        )
        graph_module: bool = Field(
            False,
            description="Return one flat torch.fx GraphModule when the model traces (as torch.fx's fuser does): "
            "no Python call per container module, but the model's own classes are gone.",
        )

    options: Options

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        """Fuse ``model`` in place (a training-mode model is copied) and report the pairs in ``ctx.details``."""
        result = fuse_batchnorm(
            model,
            ctx.example_inputs,
            inplace=True,
            probe=self.options.probe,
            graph_module=self.options.graph_module,
            rules=ctx.module_rules,
        )
        ctx.details.update(result.details())
        for entry in result.skipped:
            ctx.logger.info("skipped %s -> %s: %s", entry["layer"], entry["bn"], entry["reason"])
        return result.model


@hookimpl
def optkit_register_passes(register):
    """Register :class:`FuseBatchNorm`."""
    register(FuseBatchNorm)
