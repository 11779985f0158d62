"""State that modules keep outside parameters and buffers, made safe to trace and put back afterwards.

Ultralytics' ``Detect`` head caches its anchors and strides as plain tensor attributes, keyed by
``shape`` (the first feature map's shape). Two things then break a dynamic-batch export:

* a model measured under ``torch.inference_mode()`` (as optkit measures) caches *inference
  tensors*, which ``torch.export`` refuses ("Inference tensors cannot be saved for backward");
* a cache made by an eager call at the traced size compares a symbolic batch with a concrete one
  and pins it ("tracing inferred a static shape of 2").

:func:`release_inference_tensors` clones such tensors into ordinary ones, and
:func:`traceable_state` resets the shape caches (as Ultralytics' own exporter sets
``shape = None``) and restores every plain attribute when the export ends, so the eager module
keeps its caches rather than tensors left behind by the trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from optkit_plugins.module_rules.yolo import is_instance_of

__all__ = ["release_inference_tensors", "traceable_state"]

#: Heads whose ``shape`` attribute keys a cache of anchors (recomputed when it is ``None``).
SHAPE_CACHING_HEADS = ("ultralytics.nn.modules.head.Detect",)
_MODULE_STORES = ("_parameters", "_buffers", "_modules")


def release_inference_tensors(model: nn.Module) -> list[str]:
    """Replace inference tensors that modules keep as plain attributes (or in lists of them) by clones.

    Returns:
        ``module.attribute`` of each one replaced.
    """
    replaced = []
    for name, module in model.named_modules():
        for attribute, value in list(vars(module).items()):
            if attribute in _MODULE_STORES:
                continue
            if isinstance(value, torch.Tensor) and value.is_inference():
                with torch.inference_mode(False):
                    setattr(module, attribute, value.clone())
            elif isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) and v.is_inference() for v in value):
                with torch.inference_mode(False):
                    setattr(module, attribute, type(value)(v.clone() if isinstance(v, torch.Tensor) else v for v in value))
            else:
                continue
            replaced.append(f"{name or '(root)'}.{attribute}")
    return replaced


@contextlib.contextmanager
def traceable_state(model: nn.Module) -> Iterator[None]:
    """Trace ``model`` with its shape caches reset; every plain attribute is put back afterwards."""
    saved = [(module, {k: v for k, v in vars(module).items() if k not in _MODULE_STORES}) for module in model.modules()]
    for module in model.modules():
        if is_instance_of(module, *SHAPE_CACHING_HEADS) and hasattr(module, "shape"):
            head: Any = module  # an Ultralytics head, whose `shape` is a plain attribute
            head.shape = None
    try:
        yield
    finally:
        for module, attributes in saved:
            for key in [k for k in vars(module) if k not in attributes and k not in _MODULE_STORES]:
                del module.__dict__[key]
            module.__dict__.update(attributes)
