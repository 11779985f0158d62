"""Pareto fronts: the points no other point beats on every objective at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

__all__ = ["Objective", "pareto_front"]

T = TypeVar("T")

#: A figure of a point (``None``: unknown, the point is left out) and whether less or more is better.
Objective = tuple[Callable[[T], "float | None"], Literal["min", "max"]]


def pareto_front(points: Sequence[T], objectives: Sequence[Objective[T]]) -> list[T]:
    """The points of ``points`` that no other point dominates, in their given order.

    A point dominates another when it is at least as good on every objective and better on one.
    Points with an unknown figure are left out; equal points are all kept.

    Args:
        points: the candidates.
        objectives: each a (figure, ``"min"`` or ``"max"``) pair.
    """
    scored = []
    for point in points:
        values = [figure(point) for figure, _ in objectives]
        if any(v is None for v in values):
            continue
        # As costs: smaller is better on every axis.
        scored.append((point, [float(v) if sense == "min" else -float(v) for v, (_, sense) in zip(values, objectives, strict=True)]))  # type: ignore[arg-type]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    return [point for point, cost in scored if not any(dominates(other, cost) for _, other in scored)]
