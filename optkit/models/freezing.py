"""Freezing parameters: ``model.freeze`` after loading a backbone, or a pass's ``freeze`` option
(``finetune``): module names, globs, or ``all_but_head``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from optkit.errors import PipelineError
from optkit.models.classifier_head import ClassifierNotFoundError, find_classifier
from optkit.models.key_matching import name_matches

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ALL_BUT_HEAD", "apply_freeze"]

log = logging.getLogger(__name__)

#: The ``freeze`` entry that freezes everything except the classifier head.
ALL_BUT_HEAD = "all_but_head"

_LISTED_TRAINABLE = 20  # trainable tensors named in the account without list_keys


def apply_freeze(model: nn.Module, patterns: list[str], list_keys: bool = False, option: str = "model.freeze") -> dict[str, Any]:
    """Set ``requires_grad=False`` on the parameters ``patterns`` name (in place).

    Args:
        model: the loaded model.
        patterns: globs or module names (see :func:`optkit.models.key_matching.name_matches`), and/or
            ``all_but_head``, which freezes every parameter outside the classifier head
            (found by :func:`optkit.models.classifier_head.find_classifier`).
        list_keys: name every frozen and trainable tensor in the account.
        option: how messages name the setting (``model.freeze``, or a pass's ``option freeze``).

    Returns:
        The account: the head (for ``all_but_head``), frozen and trainable parameter and tensor
        counts, and the trainable tensors' names (always when there are at most 20).

    Raises:
        PipelineError: a pattern matches no parameter, or ``all_but_head`` finds no head.
    """
    names = [name for name, _ in model.named_parameters()]
    frozen: set[str] = set()
    account: dict[str, Any] = {"patterns": list(patterns)}
    for pattern in patterns:
        if pattern == ALL_BUT_HEAD:
            head = _head_name(model, option)
            account["head"] = head
            matched = {n for n in names if not name_matches(n, head)}
        else:
            matched = {n for n in names if name_matches(n, pattern)}
            if not matched:
                examples = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
                raise PipelineError(
                    f"{option}: {pattern!r} matches no parameter (names look like {examples}); "
                    f"use a module name, a glob such as 'layer1.*', or {ALL_BUT_HEAD}"
                )
        frozen |= matched
    trainable_count = frozen_count = 0
    trainable: list[str] = []
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
            frozen_count += param.numel()
        elif param.requires_grad:
            trainable.append(name)
            trainable_count += param.numel()
    account.update(
        {
            "frozen_params": frozen_count,
            "trainable_params": trainable_count,
            "frozen_tensors": len(frozen),
            "trainable_tensors": len(trainable),
        }
    )
    if list_keys or len(trainable) <= _LISTED_TRAINABLE:
        account["trainable"] = trainable
    if list_keys:
        account["frozen"] = [n for n in names if n in frozen]
    log.info("froze %d parameters; %d remain trainable", frozen_count, trainable_count)
    return account


def _head_name(model: nn.Module, option: str) -> str:
    try:
        return find_classifier(model)[0]
    except ClassifierNotFoundError as exc:
        raise PipelineError(f"{option}: {ALL_BUT_HEAD}: {exc.message}; list the parameters to freeze instead") from None
