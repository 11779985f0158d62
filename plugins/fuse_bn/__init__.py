"""The ``fuse_bn`` pass: fold BatchNorm into the layer before it, proven pair by pair.

Modules: :mod:`~optkit_plugins.fuse_bn.plugin` (the pass), :mod:`~optkit_plugins.fuse_bn.fusion`
(proving and folding pairs), :mod:`~optkit_plugins.fuse_bn.folding` (which pairs may fold; the
arithmetic is :func:`optkit.fold_bn_into_layer`), :mod:`~optkit_plugins.fuse_bn.graph`
(torch.fx evidence), :mod:`~optkit_plugins.fuse_bn.dataflow` (the dataflow probe),
:mod:`~optkit_plugins.fuse_bn.rules` (what module rules describe, proven on the example input).
In Python: ``from optkit_plugins.fuse_bn import fuse_batchnorm``.
"""

from optkit_plugins.fuse_bn.fusion import FusionResult, fuse_batchnorm
from optkit_plugins.fuse_bn.plugin import FuseBatchNorm, optkit_register_passes

__all__ = ["FuseBatchNorm", "FusionResult", "fuse_batchnorm", "optkit_register_passes"]
