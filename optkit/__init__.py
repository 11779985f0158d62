"""optkit: plugin-based model optimization for PyTorch.

Plugins import what they need from here::

    from optkit import Pass, PassContext, hookimpl

Importing optkit imports neither torch nor pydantic: ``Pass``, ``PassContext`` and
``__version__`` are resolved on first use, so ``optkit --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from optkit.passes import Pass, PassContext

__all__ = ["Pass", "PassContext", "hookimpl", "__version__"]


def __getattr__(name: str) -> Any:
    # PEP 562: the pass API pulls in pydantic, the version importlib.metadata; only when asked for.
    if name in ("Pass", "PassContext"):
        from optkit import passes

        return getattr(passes, name)
    if name == "__version__":
        from optkit.environment import optkit_version

        return optkit_version()
    raise AttributeError(f"module 'optkit' has no attribute {name!r}")
