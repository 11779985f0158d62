"""Model sources: ``scheme:target`` in a pipeline file becomes an ``nn.Module``.

The standard schemes (``torchvision``, ``python``, ``file``) are registered by the
``optkit_plugins.sources`` plugin through the same hook any plugin uses.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from optkit.errors import PipelineError

if TYPE_CHECKING:
    from torch import nn

    from optkit.host import Host
    from optkit.pipeline import ModelSpec

__all__ = [
    "SourceRequest",
    "SourceLoader",
    "load_model",
    "load_torchvision",
    "load_python",
    "is_weights_path",
]

log = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".tar")


@dataclass
class SourceRequest:
    """What a source loader is asked for.

    Attributes:
        target: the part of the source after ``scheme:``.
        spec: the whole validated ``model:`` section.
        base_dir: relative paths resolve against this (the pipeline file's folder).
        details: what loading has to report (lands in the baseline stage's ``details``).
    """

    target: str
    spec: ModelSpec
    base_dir: Path = field(default_factory=Path.cwd)
    details: dict[str, Any] = field(default_factory=dict)

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p


SourceLoader = Callable[[SourceRequest], "nn.Module"]


def is_weights_path(weights: str) -> bool:
    """Whether a ``weights:`` string names a file rather than a torchvision weights enum."""
    return "/" in weights or "\\" in weights or weights.lower().endswith(_CHECKPOINT_SUFFIXES)


def load_model(spec: ModelSpec, host: Host, base_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a ``model:`` section describes, weights loaded, in eval mode.

    Returns:
        ``(model, details)``; details say what was loaded from where.

    Raises:
        PipelineError: unknown scheme, unknown model, unreadable or unsafe checkpoint.
    """
    from optkit.checkpoints import apply_freeze, load_weights_into, weights_spec_of

    if spec.scheme not in host.sources:
        raise PipelineError(f"model.source: {host.unknown_message('model source scheme', spec.scheme, host.sources)}")
    loader = host.sources.get(spec.scheme).obj
    request = SourceRequest(spec.target, spec, base_dir)
    model = loader(request)
    weights = weights_spec_of(spec)
    if weights is not None:
        request.details["weights"] = load_weights_into(model, weights, base_dir)
    if spec.freeze:
        request.details["freeze"] = apply_freeze(model, spec.freeze)
    return model.eval(), request.details


def load_torchvision(request: SourceRequest) -> nn.Module:
    """``torchvision:NAME`` with ``weights: none`` or a weights name such as ``DEFAULT``."""
    import torchvision

    name = request.target
    available = torchvision.models.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise PipelineError(f"model.source: torchvision has no model {name!r}{hint}")
    weights = request.spec.weights
    named = weights if isinstance(weights, str) and not is_weights_path(weights) else None
    kwargs = dict(request.spec.kwargs)
    if named is not None:
        enum = torchvision.models.get_model_weights(name)
        try:
            kwargs["weights"] = enum[named.rsplit(".", 1)[-1]]  # IMAGENET1K_V2, DEFAULT or Enum.NAME
        except KeyError:
            known = ", ".join(["DEFAULT", *(w.name for w in enum)])
            raise PipelineError(f"model.weights: {named!r} is not a weights name of {name} (known: {known})") from None
    try:
        model = torchvision.models.get_model(name, **kwargs)
    except OSError as exc:  # URLError is an OSError: the weights could not be downloaded
        raise PipelineError(
            f"model.weights: could not download {named} for {name} ({exc}); this machine may have no "
            f"network: download the file elsewhere and give its path, e.g. weights: {{path: {name}.pth}}"
        ) from exc
    except TypeError as exc:
        raise PipelineError(f"model.kwargs: {name}: {exc}") from exc
    request.details["source"] = {"torchvision": name, "weights": named}
    return model


def load_python(request: SourceRequest) -> nn.Module:
    """``python:package.module:callable`` called with ``model.kwargs``."""
    module_name, sep, attr = request.target.rpartition(":")
    if not sep or not module_name or not attr:
        raise PipelineError(f"model.source: expected python:package.module:callable, got python:{request.target}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(f"model.source: cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise PipelineError(f"model.source: {module_name} has no callable {attr!r}")
    try:
        model = factory(**request.spec.kwargs)
    except TypeError as exc:
        raise PipelineError(f"model.kwargs: {request.target}: {exc}") from exc
    from torch import nn

    if not isinstance(model, nn.Module):
        raise PipelineError(f"model.source: {request.target} returned {type(model).__name__}, not an nn.Module")
    request.details["source"] = {"python": request.target}
    return model
