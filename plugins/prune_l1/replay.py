"""Replay: run the pruned model and check it executes exactly the predicted graph.

Each traced step (aten operator, or module run as one step by its rule) must come again, in the
same order, with every output shape equal to the traced shape with each followed dimension
shrunk to the channels kept. The first step that differs, or raises, is reported with its index,
so the caller can leave that step's channels alone and try again. This catches what no rule
knows: a ``view`` with a hard-coded width, a split by a stale attribute, a ``groups=self.channels``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from optkit import ModuleRule
from optkit_plugins.prune_l1.plan import kept_count
from optkit_plugins.prune_l1.recorder import OpaqueRule, Recorder, Step
from optkit_plugins.prune_l1.trace import Analysis, Entry, opaque_rule

__all__ = ["Diverged", "predicted_shapes", "replay"]


class Diverged(Exception):
    """The pruned model left the predicted graph at step ``index`` (``message`` says how)."""

    def __init__(self, mode: str, index: int, message: str) -> None:
        super().__init__(f"{mode} step {index}: {message}")
        self.mode, self.index, self.message = mode, index, message


def predicted_shapes(an: Analysis, entries: list[Entry], removed: set[int]) -> list[list[tuple[int, ...]]]:
    """Every step's output shapes once ``removed`` units are gone."""
    return [
        [
            tuple(kept_count(an, atoms, removed, size) for atoms, size in zip(ann, shape, strict=True))
            for ann, shape in zip(e.out_anns, e.out_shapes, strict=True)
        ]
        for e in entries
    ]


class _Replay(Recorder):
    """Compares every step with the traced one; raises :class:`Diverged` at the first difference."""

    def __init__(self, mode: str, entries: list[Entry], predicted: list[list[tuple[int, ...]]], opaque: OpaqueRule) -> None:
        super().__init__(opaque)
        self.mode, self.entries, self.predicted = mode, entries, predicted
        self.k = 0

    def step(self, step: Step) -> None:
        shapes = [tuple(t.shape) for t in step.outputs]
        if self.k >= len(self.entries):
            raise Diverged(self.mode, self.k, f"ran an extra step {step.target}")
        entry = self.entries[self.k]
        if entry.target != step.target:
            raise Diverged(self.mode, self.k, f"ran {step.target} where {entry.target} (in `{entry.scope}`) was traced")
        if shapes != self.predicted[self.k]:
            raise Diverged(self.mode, self.k, f"{step.target} in `{entry.scope}` gave shapes {shapes}, predicted {self.predicted[self.k]}")
        self.k += 1


def replay(model: nn.Module, inputs: tuple[Any, ...], an: Analysis, mode: str, removed: set[int], rules: Mapping[str, ModuleRule]) -> None:
    """Run ``model`` (already in ``mode``; a copy for train mode) and compare with ``an.traces[mode]``.

    Raises:
        Diverged: at the first step that differs from the prediction or raises.
    """
    entries = an.traces[mode]

    def opaque(name: str, module: nn.Module) -> ModuleRule | None:
        return opaque_rule(module, rules) if name in an.rules else None

    recorder = _Replay(mode, entries, predicted_shapes(an, entries, removed), opaque)
    try:
        recorder.run(model, inputs)
    except Diverged:
        raise
    # Whatever the pruned model raises (a shape error, an assertion of its own), it left the
    # predicted graph there: the step is named, and the caller leaves its channels alone.
    except Exception as exc:
        step = entries[recorder.k] if recorder.k < len(entries) else None
        where = f"{step.target} in `{step.scope}`" if step else "after the last traced step"
        raise Diverged(mode, recorder.k, f"{where} raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    if recorder.k != len(entries):
        raise Diverged(mode, recorder.k, f"stopped after {recorder.k} of {len(entries)} traced steps")
