"""Model sources: ``scheme:target`` in a pipeline file becomes an ``nn.Module``.

The standard schemes are registered by the ``optkit_plugins.sources`` plugin through the same
hook any plugin uses:

- ``torchvision:NAME``: a torchvision model; ``weights: none``, a weights name (``DEFAULT``,
  ``IMAGENET1K_V2``) or a checkpoint.
- ``file:PATH``: a checkpoint holding a whole pickled module (``torch.save(model)``, YOLOv5's
  ``{'model': ..., 'ema': ...}``); unpickling a module needs ``trust_checkpoint: true``.
- ``python:package.module:callable``: any factory, called with ``model.kwargs``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optkit.errors import CheckpointError, OptkitError, PipelineError, did_you_mean, plain_text
from optkit.files import resolve_path
from optkit.models.checkpoint_files import read_checkpoint
from optkit.models.state_dicts import WRAPPER_KEYS

if TYPE_CHECKING:
    from torch import nn

    from optkit.config.pipeline import ModelSpec

__all__ = [
    "SourceRequest",
    "SourceLoader",
    "load_torchvision",
    "load_python",
    "load_file",
    "is_weights_path",
    "import_callable",
    "call_factory",
    "import_beside",
    "STANDARD_SOURCES",
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
        example_inputs: example inputs the source knows for its model (a tensor, a tuple or a
            dict of tensors; see :meth:`optkit.inputs.ExampleInputs.of`); used when the pipeline
            file sets neither ``model.input_shape`` nor ``model.inputs``.
    """

    target: str
    spec: ModelSpec
    base_dir: Path = field(default_factory=Path.cwd)
    details: dict[str, Any] = field(default_factory=dict)
    example_inputs: Any = None

    def resolve(self, path: str | Path) -> Path:
        """``path`` made absolute against :attr:`base_dir` (``~`` expanded)."""
        return resolve_path(path, self.base_dir)


SourceLoader = Callable[[SourceRequest], "nn.Module"]


def is_weights_path(weights: str) -> bool:
    """Whether a ``weights:`` string names a file rather than a torchvision weights enum."""
    return "/" in weights or "\\" in weights or weights.lower().endswith(_CHECKPOINT_SUFFIXES)


def load_torchvision(request: SourceRequest) -> nn.Module:
    """``torchvision:NAME`` with ``weights: none`` or a weights name such as ``DEFAULT``."""
    import torchvision

    name = request.target
    available = torchvision.models.list_models()
    if name not in available:
        raise PipelineError(f"model.source: torchvision has no model {name!r}{did_you_mean(name, available, cutoff=0.5)}")
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
    except (TypeError, ValueError) as exc:  # unknown keyword, or one that contradicts the weights (num_classes)
        raise PipelineError(f"model.kwargs: {name}: {exc}") from exc
    request.details["source"] = {"torchvision": name, "weights": named}
    return model


def load_python(request: SourceRequest) -> nn.Module:
    """``python:package.module:callable`` called with ``model.kwargs``.

    The callable returns a module, or ``(module, example_inputs)`` (a tensor, a tuple of tensors
    passed positionally, or a dict of tensors passed by keyword)."""
    _refuse_weights_name(request)
    factory = import_callable(request.target, request.base_dir, "model.source")
    model = call_factory(factory, request.spec.kwargs, request.target, "model.source", "model.kwargs")
    from torch import nn

    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
        model, request.example_inputs = model
    if not isinstance(model, nn.Module):
        raise PipelineError(f"model.source: {request.target} returned {type(model).__name__}, not an nn.Module")
    request.details["source"] = {"python": request.target}
    return model


def call_factory(factory: Callable[..., Any], kwargs: dict[str, Any], target: str, option: str, kwargs_option: str) -> Any:
    """``factory(**kwargs)``: the user's own callable named by a ``python:`` source.

    What it raises is about the user's input, not a bug of the plugin that calls it, so every
    failure is a :class:`PipelineError` naming the entry (``--debug`` shows the chained traceback).

    Raises:
        PipelineError: naming ``kwargs_option`` for a ``TypeError`` (an unknown or missing
            keyword), else ``option``.
    """
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise PipelineError(f"{kwargs_option}: {target}: {exc}") from exc
    except OptkitError:
        raise
    # The user's own code, which may fail in any way.
    except Exception as exc:
        raise PipelineError(f"{option}: {target} raised {type(exc).__name__}: {plain_text(str(exc))}") from exc


def import_callable(target: str, folder: Path, option: str) -> Callable[..., Any]:
    """The callable ``package.module:name`` names (the part of a ``python:`` source after the scheme).

    Args:
        target: ``package.module:name``.
        folder: also searched for the module when it is not installed (see :func:`import_beside`).
        option: the option at fault in messages (``model.source``, ``data.eval``).

    Raises:
        PipelineError: a malformed target, a module that cannot be imported, no such callable.
    """
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise PipelineError(f"{option}: expected python:package.module:callable, got python:{target}")
    module = import_beside(module_name, folder, option)
    found = getattr(module, attr, None)
    if not callable(found):
        raise PipelineError(f"{option}: {module_name} has no callable {attr!r}")
    return found


def import_beside(module_name: str, folder: Path, option: str = "model.source") -> Any:
    """Import ``module_name``; a module that is not installed is also looked for in ``folder``.

    ``folder`` (the pipeline file's) is searched only after the installed packages, so a file
    there never shadows an installed module of the same name.

    Raises:
        PipelineError: naming ``option`` when the module cannot be imported.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.partition(".")[0]
        if exc.name != top or not ((folder / f"{top}.py").is_file() or (folder / top).is_dir()):
            raise PipelineError(f"{option}: cannot import {module_name!r}: {exc}") from exc
    except ImportError as exc:
        raise PipelineError(f"{option}: cannot import {module_name!r}: {exc}") from exc
    sys.path.append(str(folder))
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(f"{option}: cannot import {module_name!r} from {folder}: {exc}") from exc
    finally:
        sys.path.remove(str(folder))


def load_file(request: SourceRequest) -> nn.Module:
    """``file:PATH``: a checkpoint that holds a whole model (``torch.save(model)``, YOLOv5 checkpoints).

    A pickled module needs ``trust_checkpoint: true`` (or ``--trust-checkpoint``): without it the
    file is read with ``weights_only=True`` and refused, naming the blocked class. A half-precision
    model (YOLOv5 saves them so) is converted to float32, as YOLOv5's ``attempt_load`` does.

    Raises:
        CheckpointError: unreadable or refused file, or one that holds only weights (use the
            architecture as source and the file as ``weights:``).
    """
    import torch
    from torch import nn

    _refuse_weights_name(request)
    checkpoint = read_checkpoint(request.resolve(request.target), trust=request.spec.trust_checkpoint, option="model.source")
    obj, unwrapped = checkpoint.obj, None
    if isinstance(obj, Mapping):
        unwrapped = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), nn.Module)), None)
        obj = obj[unwrapped] if unwrapped is not None else obj
    if not isinstance(obj, nn.Module):
        raise CheckpointError(
            f"model.source: {checkpoint.path} holds {_what_it_holds(obj)}, not a whole model; give the "
            f"architecture as source (torchvision:NAME or python:package.module:factory) and this file as "
            f"weights: {request.target}"
        )
    details = checkpoint.account()
    details.update({"unwrapped": unwrapped, "class": f"{type(obj).__module__}.{type(obj).__qualname__}"})
    dtypes = {p.dtype for p in obj.parameters()}
    if dtypes & {torch.float16, torch.bfloat16}:
        obj = obj.float()
        details["converted"] = f"{', '.join(sorted(str(d) for d in dtypes))} -> torch.float32"
    request.details["source"] = {"file": details}
    return obj


def _refuse_weights_name(request: SourceRequest) -> None:
    """A weights *name* (``DEFAULT``) means something only to torchvision: say so, never ignore it."""
    weights = request.spec.weights
    if isinstance(weights, str) and not is_weights_path(weights):
        raise PipelineError(
            f"model.weights: {weights!r} is not a file path (no '/' and no checkpoint suffix) and only "
            f"torchvision: sources take weights names; give a checkpoint, e.g. weights: ./{weights}.pt"
        )


def _what_it_holds(obj: Any) -> str:
    import torch

    if isinstance(obj, Mapping):
        tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
        if tensors == len(obj):
            return f"a state dict ({tensors} tensors)"
        return f"a dict with entries {', '.join(map(str, list(obj)[:8]))}"
    return f"a {type(obj).__name__}"


#: The schemes optkit ships, by name: its standard ``sources`` plugin registers them through
#: ``optkit_register_sources`` as any plugin registers its own.
STANDARD_SOURCES: dict[str, SourceLoader] = {"torchvision": load_torchvision, "python": load_python, "file": load_file}
