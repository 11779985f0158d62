"""From an :class:`~optkit_plugins.prune_l1.trace.Analysis` to a pruning plan: groups, importance, units removed.

A *unit* is a union-find set of atoms that is not fixed and holds at least one *produced* atom
(an output channel of a convolution/Linear weight). Units whose produced atoms come from the same
weights form a :class:`Group`; ``amount`` of every group's units is removed (the lowest L1
importance first). A fixed set with produced atoms is reported in :class:`Fixed`, with its reason.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from optkit_plugins.prune_l1.trace import Analysis

__all__ = [
    "Group",
    "Fixed",
    "groups_of",
    "fixed_of",
    "units_to_keep",
    "importance",
    "choose_removed",
    "choose_uniform",
    "choose_global",
    "keep_outputs",
    "exclude",
    "kept_count",
    "matches",
]


def _module_of(tensor_name: str) -> str:
    return tensor_name.rpartition(".")[0]


@dataclass
class Group:
    """Units removed together from the same producing layers."""

    producers: list[str]  # modules whose output channels these are
    units: list[int] = field(default_factory=list)
    channels: int = 0  # channels in the first producer


@dataclass
class Fixed:
    """Output channels of some layers that are left alone, and why."""

    producers: list[str]
    channels: int
    reason: str


def _produced_by_root(an: Analysis) -> dict[int, list[int]]:
    roots: dict[int, list[int]] = {}
    for atom in sorted(an.produced):
        roots.setdefault(an.uf.find(atom), []).append(atom)
    return roots


def groups_of(an: Analysis) -> list[Group]:
    """The prunable groups, in the order their first producer appears."""
    grouped: dict[tuple[str, ...], Group] = {}
    for root, atoms in _produced_by_root(an).items():
        if an.uf.fixed_reason(root) is not None:
            continue
        producers = tuple(dict.fromkeys(_module_of(an.origin[a][0]) for a in atoms))
        group = grouped.setdefault(producers, Group(list(producers)))
        group.units.append(root)
        first = producers[0]
        group.channels += sum(1 for a in atoms if _module_of(an.origin[a][0]) == first)
    return list(grouped.values())


def fixed_of(an: Analysis) -> list[Fixed]:
    """Output channels left alone, grouped by layers and reason."""
    found: dict[tuple[tuple[str, ...], str], int] = {}
    for root, atoms in _produced_by_root(an).items():
        reason = an.uf.fixed_reason(root)
        if reason is None:
            continue
        producers = tuple(dict.fromkeys(_module_of(an.origin[a][0]) for a in atoms))
        key = (producers, reason)
        found[key] = found.get(key, 0) + sum(1 for a in atoms if _module_of(an.origin[a][0]) == producers[0])
    return [Fixed(list(p), n, r) for (p, r), n in found.items()]


def units_to_keep(count: int, amount: float) -> int:
    """``floor(count * (1 - amount))``, at least 1: Torch-Pruning's rounding (64 at 0.3 keeps 44).

    So ``ceil(count * amount)`` units are removed. ``1e-9`` of slack absorbs float rounding:
    ``10 * (1 - 0.8)`` is ``1.9999999999999996``, and 10 units at 0.8 keep 2, not 1.
    """
    return max(1, min(count, math.floor(count * (1.0 - amount) + 1e-9)))


def importance(model: nn.Module, an: Analysis) -> dict[int, float]:
    """L1 norm of each produced channel's weights, divided by the layer's mean, summed per unit."""
    tensors = dict(model.named_parameters())
    scores: dict[int, float] = {}
    by_tensor: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for atom in an.produced:
        name, dim, index = an.origin[atom]
        by_tensor.setdefault((name, dim), []).append((index, atom))
    for (name, dim), entries in by_tensor.items():
        weight = tensors.get(name)
        if weight is None:
            continue
        norms = weight.detach().float().abs().transpose(0, dim).flatten(1).sum(1)
        norms = norms / norms.mean().clamp_min(torch.finfo(norms.dtype).tiny)
        values = norms.tolist()
        for index, atom in entries:
            root = an.uf.find(atom)
            scores[root] = scores.get(root, 0.0) + values[index]
    return scores


def choose_removed(model: nn.Module, an: Analysis, groups: list[Group], amount: float, round_to: int = 1) -> set[int]:
    """The units to remove: ``amount`` of each group's, lowest L1 :func:`importance` first
    (``prune_l1 mode: channels``: :func:`choose_uniform` with today's L1 scores)."""
    return choose_uniform(groups, importance(model, an), amount, round_to)


def _rounded_keep(group: Group, keep: int, round_to: int) -> int:
    """``keep`` rounded up so that the group keeps a multiple of ``round_to`` channels where its unit width allows."""
    width = max(1, group.channels // max(len(group.units), 1))
    step = round_to // math.gcd(round_to, width)
    return min(len(group.units), math.ceil(keep / step) * step)


def _lowest(group: Group, scores: dict[int, float], keep: int) -> list[int]:
    ranked = sorted(group.units, key=lambda u: (-scores.get(u, 0.0), u))
    return ranked[keep:]


def choose_uniform(groups: list[Group], scores: dict[int, float], amount: float, round_to: int = 1) -> set[int]:
    """``amount`` of every group's units, the lowest ``scores`` first (``floor(n * (1 - amount))`` kept).

    With ``round_to``, each group keeps a multiple of ``round_to`` channels (rounded up) where
    its unit width allows.
    """
    removed: set[int] = set()
    for group in groups:
        keep = _rounded_keep(group, units_to_keep(len(group.units), amount), round_to)
        removed.update(_lowest(group, scores, keep))
    return removed


def choose_global(groups: list[Group], scores: dict[int, float], amount: float, floor: float, round_to: int = 1) -> set[int]:
    """``amount`` of all units, one ranking over every group's ``scores`` (normalised per group by the caller).

    Every group keeps at least ``ceil(n * floor)`` units (and at least 1), so no layer vanishes;
    ``round_to`` rounds each group's kept count up as :func:`choose_uniform` does.
    """
    total = sum(len(g.units) for g in groups)
    budget = total - max(0, min(total, math.floor(total * (1.0 - amount) + 1e-9)))
    minimum = {id(g): max(1, math.ceil(len(g.units) * floor - 1e-9)) for g in groups}
    ranked = sorted(((scores.get(u, 0.0), u, g) for g in groups for u in g.units), key=lambda item: (item[0], item[1]))
    cut: dict[int, int] = {id(g): 0 for g in groups}
    for _, _, group in ranked:
        if budget <= 0:
            break
        if len(group.units) - cut[id(group)] > minimum[id(group)]:
            cut[id(group)] += 1
            budget -= 1
    removed: set[int] = set()
    for group in groups:
        keep = _rounded_keep(group, len(group.units) - cut[id(group)], round_to)
        removed.update(_lowest(group, scores, keep))
    return removed


def kept_count(an: Analysis, atoms: list[int] | None, removed: set[int], size: int) -> int:
    """The size of a dimension once ``removed`` units are gone."""
    if atoms is None or not removed:
        return size
    return sum(1 for a in atoms if an.uf.find(a) not in removed)


def matches(name: str, patterns: Iterable[str]) -> bool:
    """``name`` is one of ``patterns``, below one of them, or matches one as a glob."""
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p) for p in patterns)


def keep_outputs(an: Analysis, modules: Iterable[str], reason: str) -> None:
    """Fix the output channels of every layer in (or below) ``modules``; their inputs may shrink."""
    modules = list(modules)
    if not modules:
        return
    for atom in an.produced:
        if matches(_module_of(an.origin[atom][0]), modules):
            an.uf.fix([atom], reason)


def exclude(an: Analysis, modules: Iterable[str], reason: str) -> None:
    """Leave every layer in (or below) ``modules`` exactly as it is: inputs and outputs."""
    modules = list(modules)
    if not modules:
        return
    for name, ann in an.tensor_anns.items():
        if matches(_module_of(name), modules):
            for atoms in ann:
                if atoms is not None:
                    an.uf.fix(atoms, reason)
