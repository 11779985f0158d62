"""optkit: plugin-based model optimization for PyTorch.

Plugins import what they need from here::

    from optkit import Pass, PassContext, hookimpl

Importing optkit does not import torch.
"""

from optkit.hookspecs import hookimpl
from optkit.passes import Pass, PassContext

__all__ = ["Pass", "PassContext", "hookimpl", "__version__"]

from optkit.environment import optkit_version as _optkit_version

__version__ = _optkit_version()
