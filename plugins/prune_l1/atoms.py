"""Channel *atoms* merged in a union-find; a set of atoms may be *fixed* (left alone) with a reason.

An atom is one position along one dimension of one tensor (a channel of an activation, a row of
a weight). Atoms that must be kept or removed together are merged. A merged set is one *unit* of
pruning; a set that meets anything the analysis cannot follow is fixed, and the first reason
given is kept so that every refusal can be named.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["Ann", "UnionFind"]

#: A tensor's annotation: per dimension, ``None`` (not followed) or one atom per position.
Ann = list  # list[list[int] | None]


class UnionFind:
    """Atoms (ints) merged into sets; a set may be fixed with a reason."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.reason: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.parent)

    def new(self, count: int) -> list[int]:
        """``count`` fresh atoms, each in its own set."""
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return list(range(start, start + count))

    def find(self, atom: int) -> int:
        """The representative of ``atom``'s set."""
        parent = self.parent
        while parent[atom] != atom:
            parent[atom] = parent[parent[atom]]  # path halving
            atom = parent[atom]
        return atom

    def union(self, a: int, b: int) -> None:
        """Merge the sets of ``a`` and ``b``; a fixed set keeps its reason."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb in self.reason and ra not in self.reason:
            ra, rb = rb, ra  # keep the fixed root (and its first reason)
        self.parent[rb] = ra
        self.reason.pop(rb, None)

    def union_lists(self, a: Sequence[int], b: Sequence[int]) -> None:
        """Merge ``a[i]`` with ``b[i]`` for every ``i`` (the lists have the same length)."""
        if a is b:
            return
        for x, y in zip(a, b, strict=True):
            if x != y:
                self.union(x, y)

    def fix(self, atoms: Iterable[int], reason: str) -> None:
        """Fix the sets of ``atoms``; a set already fixed keeps its first reason."""
        for atom in atoms:
            self.reason.setdefault(self.find(atom), reason)

    def fixed_reason(self, atom: int) -> str | None:
        """Why ``atom``'s set is fixed, or ``None`` when it may be pruned."""
        return self.reason.get(self.find(atom))
