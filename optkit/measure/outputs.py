"""The tensors of a model output: their order, names and paths, and selecting some of them.

Outputs are flattened with ``torch.utils._pytree`` (tuples and lists in order, dicts in insertion
order, namedtuples by field), which is how both ONNX exporters flatten them, so the n-th tensor
here is the n-th graph output of an exported model. Each tensor has:

* an **index** in that order (negative indices count from the end when selecting);
* a **name**: ``output`` for a lone tensor, dict keys (``out``, ``aux``), ``output_0``,
  ``output_1`` for a tuple, ``output_1.boxes`` or ``output_1.feats.0`` when nested;
* a **path**: the ``keystr`` of its pytree path (``[0]``, ``[1]['boxes']``, ``['out']``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

__all__ = ["OutputLeaf", "output_leaves", "flatten_outputs", "resolve_output_selection", "select_outputs"]


@dataclass(frozen=True)
class OutputLeaf:
    """One tensor of a model output.

    Attributes:
        index: its position in the flattened output.
        name: the graph-output name optkit gives it (see the module docstring).
        path: its pytree path, as ``keystr`` writes it (``[0]``, ``['out']``).
        shape: its shape (empty for a value that is not a tensor).
    """

    index: int
    name: str
    path: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.index}: {self.name} {list(self.shape)}"


def _key_name(key: Any) -> str:
    for attribute in ("key", "idx", "name"):  # MappingKey, SequenceKey, GetAttrKey (namedtuple)
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def output_leaves(outputs: Any) -> list[OutputLeaf]:
    """Index, name, path and shape of every leaf of a model output, in the exporters' order.

    The leaves of ``(y, {"boxes": b, "feats": [f]})`` are named ``output_0``, ``output_1.boxes`` and
    ``output_1.feats.0``.
    """
    flat, _ = pytree.tree_flatten_with_path(outputs)
    leaves = []
    for index, (path, leaf) in enumerate(flat):
        parts = [_key_name(key) for key in path]
        if not parts:
            name = "output"
        elif isinstance(path[0], pytree.SequenceKey):
            name = "output_" + ".".join(parts)
        else:
            name = ".".join(parts)
        shape = tuple(int(d) for d in leaf.shape) if isinstance(leaf, torch.Tensor) else ()
        leaves.append(OutputLeaf(index, name, pytree.keystr(path) or "output", shape))
    return leaves


def flatten_outputs(outputs: Any) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple/list, dict or namedtuple), in the exporters' order."""
    return [leaf for leaf in pytree.tree_leaves(outputs) if isinstance(leaf, torch.Tensor)]


def resolve_output_selection(selection: Sequence[int | str], leaves: list[OutputLeaf]) -> list[int]:
    """Flattened indices of the outputs ``selection`` names, in the order given.

    Args:
        selection: indices (negative from the end), names or paths of :func:`output_leaves`.
        leaves: the model's outputs.

    Raises:
        ValueError: an index out of range, a name or path that matches nothing, a repeat or an
            empty selection; the message lists every output with its index, name and shape.
    """
    listing = "the model's outputs are " + ", ".join(leaf.describe() for leaf in leaves)
    chosen: list[int] = []
    for item in selection:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ValueError(f"{item!r} is neither an index nor a name; {listing}")
        if isinstance(item, int):
            if not -len(leaves) <= item < len(leaves):
                raise ValueError(f"index {item} is out of range; {listing}")
            index = item % len(leaves)
        else:
            index = next((leaf.index for leaf in leaves if item in (leaf.name, leaf.path)), -1)
            if index < 0:
                raise ValueError(f"{item!r} names no output; {listing}")
        if index in chosen:
            raise ValueError(f"{item!r} selects {leaves[index].name} a second time; {listing}")
        chosen.append(index)
    if not chosen:
        raise ValueError(f"select at least one output; {listing}")
    return chosen


def select_outputs(outputs: Any, indices: Sequence[int]) -> Any:
    """The leaves ``indices`` of ``outputs``: one tensor, or a tuple in the order given."""
    leaves = pytree.tree_leaves(outputs)
    chosen = [leaves[i] for i in indices]
    return chosen[0] if len(chosen) == 1 else tuple(chosen)
