"""optkit: plugin-based model optimization for PyTorch.

Plugins import what they need from here::

    from optkit import Pass, PassContext, hookimpl

Everything is resolved on first use (PEP 562): importing optkit imports neither torch nor
pydantic nor pluggy, so ``optkit --help`` stays fast. The public API is the names below, the
top-level modules (:mod:`optkit.errors`, :mod:`optkit.files`, :mod:`optkit.passes`,
:mod:`optkit.artifacts`, :mod:`optkit.results`, :mod:`optkit.testing`) and what each package's
``__init__`` exports (:mod:`optkit.models`, :mod:`optkit.measure`, ...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optkit.artifacts import Artifact, OnnxArtifact
    from optkit.host import hookimpl
    from optkit.passes import Pass, PassContext, PassData, Progress, Tolerance

__all__ = ["Pass", "PassContext", "PassData", "Progress", "Tolerance", "Artifact", "OnnxArtifact", "hookimpl", "__version__"]

#: Public name -> the module that defines it.
_EXPORTS = {
    "Pass": "optkit.passes",
    "PassContext": "optkit.passes",
    "PassData": "optkit.passes",
    "Progress": "optkit.passes",
    "Tolerance": "optkit.passes",
    "Artifact": "optkit.artifacts",
    "OnnxArtifact": "optkit.artifacts",
    "hookimpl": "optkit.host",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name == "__version__":
        return importlib.import_module("optkit.results").optkit_version()
    raise AttributeError(f"module 'optkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
