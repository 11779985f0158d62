"""From the channel analysis to the public view a criterion scores (:class:`optkit.PruningGroup`).

Every atom of a parameter (one row or column of a weight, one entry of a BatchNorm scale) whose
union-find set is a unit of a group is one *position* of that unit in that parameter; the
positions of a group, tensor by tensor, are what :class:`~optkit.GroupTensor` lists.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from optkit import GroupTensor, PassData, PruningGroup
from optkit_plugins.prune_l1.channels import PRUNABLE
from optkit_plugins.prune_l1.plan import Group
from optkit_plugins.prune_l1.trace import Analysis

__all__ = ["GroupViews", "group_views", "gradient_source", "logits_of"]

log = logging.getLogger(__name__)

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass
class GroupViews:
    """The views of a plan's groups, and which unit (union-find root) each channel of each view is."""

    views: list[PruningGroup]
    units: list[list[int]]  # units[g][i]: the root of channel i of views[g]


#: GroupTensor.role: optkit's TensorRole, which is not in the public API a plugin imports from.
Role = Literal["output", "input", "norm", "bias", "other"]


def _role(module: nn.Module, attr: str, dim: int, produced: bool) -> Role:
    if produced:
        return "output"
    if isinstance(module, PRUNABLE) and attr == "weight":
        return "input"
    if isinstance(module, _NORMS):
        return "norm" if attr == "weight" else "bias"
    return "bias" if attr == "bias" else "other"


def group_views(
    model: nn.Module,
    an: Analysis,
    groups: Iterable[Group],
    *,
    data: PassData | None,
    reduction: str,
    gradients: Callable[[], Mapping[str, torch.Tensor]] | None,
) -> GroupViews:
    """One :class:`PruningGroup` per group of the plan, over ``model``'s parameters (buffers are left out).

    Args:
        model: the model the analysis traced (its parameter names are the analysis's).
        an: the analysis.
        groups: the plan's groups (:func:`~optkit_plugins.prune_l1.plan.groups_of`).
        data: the loaders criteria may read.
        reduction: ``sum``, ``mean`` or ``max`` (:meth:`PruningGroup.aggregate`).
        gradients: computes ``name -> ∂L/∂w`` once (shared by every view), or ``None`` without data.
    """
    groups = list(groups)
    channel_of = {root: (g, i) for g, group in enumerate(groups) for i, root in enumerate(group.units)}
    parameters = dict(model.named_parameters())
    # (group, parameter name, dim) -> channel -> positions along dim
    found: dict[tuple[int, str, int], dict[int, list[int]]] = {}
    for atom, (name, dim, index) in an.origin.items():
        place = channel_of.get(an.uf.find(atom))
        if place is None or name not in parameters:
            continue
        found.setdefault((place[0], name, dim), {}).setdefault(place[1], []).append(index)
    tensors: dict[int, list[GroupTensor]] = {}
    for (g, name, dim), positions in sorted(found.items(), key=lambda item: (item[0][0], item[0][1], item[0][2])):
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        produced = any(a in an.produced for a in _atoms(an, name, dim, positions))
        tensors.setdefault(g, []).append(
            GroupTensor(
                name=name,
                module=module_name,
                role=_role(module, attr, dim, produced),
                tensor=parameters[name].detach(),
                dim=dim,
                positions=tuple(tuple(sorted(positions.get(i, ()))) for i in range(len(groups[g].units))),
            )
        )
    views = []
    for g, group in enumerate(groups):
        members = tensors.get(g, [])
        views.append(
            PruningGroup(
                name=group.producers[0],
                channels=len(group.units),
                layers={t.module: model.get_submodule(t.module) for t in members},
                tensors=tuple(members),
                data=data,
                reduction=reduction,
                gradient_source=gradients,
            )
        )
    return GroupViews(views, [list(group.units) for group in groups])


def _atoms(an: Analysis, name: str, dim: int, positions: dict[int, list[int]]) -> list[int]:
    atoms = an.tensor_anns[name][dim] or []
    return [atoms[p] for ps in positions.values() for p in ps if p < len(atoms)]


def logits_of(output: object) -> torch.Tensor:
    """The first tensor of a model's output (a classifier's logits)."""
    leaves = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise ValueError("the model returned no tensor")
    return leaves[0].flatten(1) if leaves[0].dim() > 2 else leaves[0]


def gradient_source(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], count: int
) -> Callable[[], dict[str, torch.Tensor]]:
    """``∂L/∂w`` of every parameter of ``model``, summed over ``count`` batches, computed on first call.

    ``L`` is the cross-entropy of the logits against the labels, or, for samples without one
    (``-1``), against the model's own top-1: at the unpruned model a distillation loss against
    itself has zero gradient, so its confident prediction is the target instead. The model is
    copied (its gradients and BatchNorm statistics stay as they are) and run in eval mode.
    """
    cache: dict[str, torch.Tensor] = {}

    def gradients() -> dict[str, torch.Tensor]:
        if cache:
            return cache
        work = copy.deepcopy(model).eval()
        params = dict(work.named_parameters())
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        seen = 0
        for inputs, labels in itertools.islice(batches, count):
            logits = logits_of(work(inputs))
            targets = torch.where(labels >= 0, labels, logits.detach().argmax(1)) if labels.dim() == 1 else logits.detach().argmax(1)
            torch.nn.functional.cross_entropy(logits.float(), targets.to(logits.device)).backward()
            seen += 1
        if not seen:
            raise ValueError("the data loader gave no batch to compute gradients on")
        for name, p in params.items():
            cache[name] = p.grad.detach() if p.grad is not None else torch.zeros_like(p.detach())
        log.debug("gradients over %d batch(es)", seen)
        return cache

    return gradients
