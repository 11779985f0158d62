"""Pairing a checkpoint's tensors with a model's: by name (YOLOv5's ``intersect_dicts``) or by position.

``match_by_name`` keeps the tensors whose name and shape agree. ``match_by_order`` pairs the
model's tensors with the checkpoint's in state-dict order while their shapes agree, for a model
whose modules were renamed but keep the layout (a custom ResNet whose backbone is torchvision's
under other names). Either way the result says what was paired, what is missing, what was
unexpected and where shapes disagreed.

Example:
    >>> pairing = match_by_name(checkpoint_state, model.state_dict(), exclude=["fc"])  # doctest: +SKIP
    >>> len(pairing.pairs), pairing.missing
    (120, ['fc.weight', 'fc.bias'])
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["ShapeMismatch", "KeyPairing", "name_matches", "match_by_name", "match_by_order"]

_BN_COUNTER = "num_batches_tracked"


def name_matches(name: str, pattern: str) -> bool:
    """Whether a tensor or parameter ``name`` matches ``pattern``.

    A pattern is a glob (``layer4.*``, ``*.bias``); a plain module name also matches everything
    under it, so ``fc`` matches ``fc.weight`` and ``head`` matches ``head.0.bias``.
    """
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def _excluded(name: str, patterns: Iterable[str]) -> bool:
    return any(name_matches(name, p) for p in patterns)


@dataclass(frozen=True)
class ShapeMismatch:
    """A checkpoint tensor and a model tensor paired by name or position whose shapes differ."""

    checkpoint_key: str
    model_key: str
    checkpoint_shape: tuple[int, ...]
    model_shape: tuple[int, ...]

    def __str__(self) -> str:
        names = self.model_key if self.model_key == self.checkpoint_key else f"{self.checkpoint_key} -> {self.model_key}"
        return f"{names}: checkpoint {list(self.checkpoint_shape)} vs model {list(self.model_shape)}"


@dataclass
class KeyPairing:
    """What pairing found.

    Attributes:
        pairs: model key -> checkpoint key (the tensors to load).
        missing: model keys left unfilled (not excluded, no shape disagreement).
        unexpected: checkpoint keys not used (not excluded, no shape disagreement).
        mismatched: pairs whose shapes disagree (not loaded).
        excluded: model and checkpoint keys left out by ``exclude`` patterns.
    """

    pairs: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[ShapeMismatch] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every tensor not excluded was paired (what ``strict: true`` requires)."""
        return not (self.missing or self.unexpected or self.mismatched)


def match_by_name(checkpoint: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor], exclude: Iterable[str] = ()) -> KeyPairing:
    """Pair tensors whose names and shapes agree (YOLOv5's ``intersect_dicts``, with an account).

    Args:
        checkpoint: the checkpoint's tensors by name (already unwrapped and cleaned).
        model: the model's state dict.
        exclude: patterns (see :func:`name_matches`) of names to leave out on either side.

    Returns:
        The pairing; a model key is paired with the checkpoint key of the same name.
    """
    exclude = list(exclude)
    result = KeyPairing()
    for key, tensor in model.items():
        if _excluded(key, exclude):
            result.excluded.append(key)
        elif key not in checkpoint:
            result.missing.append(key)
        elif checkpoint[key].shape != tensor.shape:
            result.mismatched.append(ShapeMismatch(key, key, tuple(checkpoint[key].shape), tuple(tensor.shape)))
        else:
            result.pairs[key] = key
    for key in checkpoint:
        if key in model:
            continue
        (result.excluded if _excluded(key, exclude) else result.unexpected).append(key)
    return result


def match_by_order(checkpoint: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor], exclude: Iterable[str] = ()) -> KeyPairing:
    """Pair tensors by position, in state-dict order, until the first shape disagreement.

    BatchNorm's ``num_batches_tracked`` counters are left out of the positional walk (old
    checkpoints lack them) and paired with their layer's: ``a.num_batches_tracked`` follows
    ``a.running_mean`` to wherever that was paired.

    Args:
        checkpoint: the checkpoint's tensors by name (already unwrapped and cleaned).
        model: the model's state dict.
        exclude: patterns (see :func:`name_matches`) of names to leave out on either side.

    Returns:
        The pairing: the tensors before the first disagreement are paired, the disagreeing pair
        is ``mismatched``, and everything after it is ``missing`` or ``unexpected``.
    """
    exclude = list(exclude)
    result = KeyPairing()
    model_keys = _positional_keys(model, exclude, result.excluded)
    checkpoint_keys = _positional_keys(checkpoint, exclude, result.excluded)
    position = 0
    for position, (model_key, checkpoint_key) in enumerate(zip(model_keys, checkpoint_keys, strict=False)):
        model_shape, checkpoint_shape = tuple(model[model_key].shape), tuple(checkpoint[checkpoint_key].shape)
        if model_shape != checkpoint_shape:
            result.mismatched.append(ShapeMismatch(checkpoint_key, model_key, checkpoint_shape, model_shape))
            position += 1
            break
        result.pairs[model_key] = checkpoint_key
    else:
        position = min(len(model_keys), len(checkpoint_keys))
    result.missing += model_keys[position:]
    result.unexpected += checkpoint_keys[position:]
    _pair_bn_counters(result, checkpoint, model, exclude)
    return result


def _positional_keys(state: Mapping[str, torch.Tensor], exclude: list[str], excluded: list[str]) -> list[str]:
    keys = []
    for key in state:
        if _excluded(key, exclude):
            excluded.append(key)
        elif key.rpartition(".")[2] != _BN_COUNTER:
            keys.append(key)
    return keys


def _pair_bn_counters(
    result: KeyPairing, checkpoint: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor], exclude: list[str]
) -> None:
    """Pair each layer's ``num_batches_tracked`` the way its ``running_mean`` was paired."""
    layer_pairs = {
        model_key.rpartition(".")[0]: checkpoint_key.rpartition(".")[0]
        for model_key, checkpoint_key in result.pairs.items()
        if model_key.endswith(".running_mean") and checkpoint_key.endswith(".running_mean")
    }
    used = set()
    for key in model:
        layer, _, leaf = key.rpartition(".")
        if leaf != _BN_COUNTER or _excluded(key, exclude):
            continue
        source = f"{layer_pairs[layer]}.{_BN_COUNTER}" if layer in layer_pairs else None
        if source is not None and source in checkpoint:
            result.pairs[key] = source
            used.add(source)
        else:
            result.missing.append(key)
    result.unexpected += [k for k in checkpoint if k.rpartition(".")[2] == _BN_COUNTER and k not in used and not _excluded(k, exclude)]
