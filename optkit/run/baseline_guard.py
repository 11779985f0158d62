"""The baseline model passes read (``ctx.baseline_model``) stays as it was: its state is fingerprinted
before each stage and checked after it, and a pass that changed it fails its stage, named.

A pass that zeroes the teacher's weights or wraps its forward in a sleep would otherwise corrupt
every later stage unseen (a distillation from a zeroed teacher, a speed-up over a slowed baseline).
The fingerprint covers every tensor's bytes, dtype and shape, and per module its class, its
training flag, the callables set on the instance (a replaced ``forward``), its class's ``forward``
and its hooks.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

__all__ = ["BaselineGuard"]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


class BaselineGuard:
    """A fingerprint of ``model`` taken now; :meth:`changes` says what differs later.

    Args:
        model: the baseline model passes read, or ``None`` (nothing to guard).
    """

    def __init__(self, model: nn.Module | None) -> None:
        self.model = model
        self.before = _fingerprint(model) if model is not None else {}

    def changes(self) -> list[str]:
        """What changed since the fingerprint, as ``its tensor 'name'`` / ``its module 'name' (what)``; ``[]`` when nothing."""
        if self.model is None:
            return []
        after = _fingerprint(self.model)
        keys = [*self.before, *(key for key in after if key not in self.before)]  # tensors first, in the model's order
        return [key for key in keys if self.before.get(key) != after.get(key)]


def _fingerprint(model: nn.Module) -> dict[str, Any]:
    found: dict[str, Any] = {}
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            found[f"its tensor {name!r}"] = _tensor_digest(tensor)
    for name, module in model.named_modules():
        cls = type(module)
        found[f"its module {name!r} (class)"] = (cls.__module__, cls.__qualname__, id(getattr(cls, "forward", None)))
        found[f"its module {name!r} (mode)"] = module.training
        instance_callables = sorted(
            (key, id(value)) for key, value in vars(module).items() if callable(value) and not isinstance(value, nn.Module)
        )
        for key, identity in instance_callables:
            found[f"its module {name!r} ({key})"] = identity
        hooks = tuple(len(getattr(module, attribute, {}) or {}) for attribute in _HOOK_DICTS)
        if any(hooks):
            found[f"its module {name!r} (hooks)"] = hooks
    return found


def _tensor_digest(tensor: Any) -> Any:
    if not isinstance(tensor, torch.Tensor):
        return repr(tensor)
    data = tensor.detach()
    if data.is_sparse or data.is_quantized:  # rare in a baseline: compared by value instead of bytes
        return (str(data.dtype), tuple(data.shape), repr(data.cpu()))
    raw = data.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    # numpy's stubs give ndarray __buffer__ (typing.Buffer) only for Python >= 3.12; the array is a buffer on 3.11 too.
    return (str(data.dtype), tuple(data.shape), hashlib.blake2b(raw, digest_size=16).hexdigest())  # type: ignore[arg-type]
