"""Attention heads as one step of the channel analysis, read from a module rule's
:class:`optkit.AttentionHeads`.

Attention whose q, k and v projections are reshaped into heads splits channels across
dimensions, which the operator rules do not follow (the channels would be left alone). A module a
rule describes as attention heads therefore runs as one opaque step: its input channels are
consumed by the q, k and v projections (one fused ``qkv``, or three apart), its output channels
are ``proj``'s rows (or, without ``proj``, the heads' outputs side by side, which the operator
rules follow into the projection outside the module), and each head is one unit: its q, k and v
rows and its columns of the projection are removed together, so the reshape into heads stays
valid once ``num_heads`` is updated after the surgery.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from optkit import AttentionHeads
from optkit_plugins.prune_l1.atoms import Ann, UnionFind

__all__ = ["ModuleStepLike", "attention_heads", "heads_after_surgery"]


class ModuleStepLike(Protocol):
    """What reading a module step may do (:class:`optkit_plugins.prune_l1.trace.ModuleStep`)."""

    name: str
    uf: UnionFind

    def ann(self, t: torch.Tensor) -> Ann: ...
    def set_ann(self, t: torch.Tensor, ann: Ann) -> None: ...
    def param(self, qualified: str) -> Ann | None: ...
    def tie(self, a: list[int] | None, b: list[int] | None, reason: str) -> None: ...
    def produce(self, atoms: list[int] | None) -> None: ...
    def opaque_unknown(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor], why: str) -> None: ...


def _strides(layout: tuple[str, str, str], heads: int, head_dim: int) -> dict[str, int]:
    """The row stride of each axis of a fused ``qkv``'s output rows laid out as ``layout``."""
    sizes = {"qkv": 3, "heads": heads, "dim": head_dim}
    strides, step = {}, 1
    for axis in reversed(layout):
        strides[axis] = step
        step *= sizes[axis]
    return strides


def _head_rows(spec: AttentionHeads, rows: list[list[int]], heads: int, head_dim: int) -> list[list[list[int]]]:
    """``[head][q, k, v]`` -> the atoms of that head's rows, ``head_dim`` of them in order.

    Args:
        spec: the rule's description.
        rows: the output-row atoms of each projection (one fused, or q, k and v apart).
        heads: the number of heads.
        head_dim: the width of one head.
    """
    if len(rows) == 3:  # apart: rows (heads, head_dim) in each
        return [[part[h * head_dim : (h + 1) * head_dim] for part in rows] for h in range(heads)]
    strides = _strides(spec.layout, heads, head_dim)
    return [
        [[rows[0][s * strides["qkv"] + h * strides["heads"] + d * strides["dim"]] for d in range(head_dim)] for s in range(3)]
        for h in range(heads)
    ]


def attention_heads(step: ModuleStepLike, module: nn.Module, args: tuple, output: Any, spec: AttentionHeads) -> None:
    """Relate the atoms of an attention module's input, output and weights (see the module docstring).

    Args:
        step: the module's step in the analysis.
        module: the attention module.
        args: its positional arguments (the first is the token tensor, channels last).
        output: what it returned (the first tensor is the result, channels last).
        spec: the rule's description of the module.
    """
    x = args[0]
    results = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
    y = results[0]
    heads, head_dim = int(getattr(module, spec.num_heads)), int(getattr(module, spec.head_dim))
    prefix = f"{step.name}." if step.name else ""
    weights = [step.param(f"{prefix}{name}.weight") for name in spec.projections]
    proj_weight = step.param(f"{prefix}{spec.proj}.weight") if spec.proj is not None else None
    found = [w for w in weights if w is not None]
    if len(found) != len(weights) or (spec.proj is not None and proj_weight is None):
        names = "/".join([*spec.projections, *([spec.proj] if spec.proj else [])])
        step.opaque_unknown([x], [y], f"whose weights {names} were not found")
        return
    width = heads * head_dim * (3 if len(found) == 1 else 1)
    rows = [w[0] for w in found if w[0] is not None and len(w[0]) == width]
    cols = proj_weight[1] if proj_weight is not None else None
    if len(rows) != len(found) or (proj_weight is not None and (cols is None or len(cols) != heads * head_dim)):
        step.opaque_unknown([x], [y], f"whose weights do not have {heads} heads x {head_dim} rows for each of q, k and v")
        return
    if proj_weight is None and y.shape[-1] != heads * head_dim:
        step.opaque_unknown([x], [y], f"whose output does not have {heads} heads x {head_dim} channels")
        return
    why = f"meet the input of attention `{step.name}`, which is not followed"
    X = step.ann(x)
    per_head = _head_rows(spec, rows, heads, head_dim)
    units = [per_head[h][0][0] for h in range(heads)]
    for h, parts in enumerate(per_head):
        for atom in [a for part in parts for a in part] + (cols[h * head_dim : (h + 1) * head_dim] if cols is not None else []):
            step.uf.union(units[h], atom)
    for name, w in zip(spec.projections, found, strict=True):
        step.tie(X[-1], w[1], why)
        bias = step.param(f"{prefix}{name}.bias")
        if bias is not None:
            step.tie(bias[0], w[0], why)
        step.produce(w[0])
    ann = list(X)
    if proj_weight is not None:
        proj_bias = step.param(f"{prefix}{spec.proj}.bias")
        if proj_bias is not None:
            step.tie(proj_bias[0], proj_weight[0], why)
        step.produce(proj_weight[0])
        ann[-1] = proj_weight[0]
    else:  # the heads' outputs side by side: channel h * head_dim + d is head h's value row d
        ann[-1] = [a for parts in per_head for a in parts[2]]
    step.set_ann(y, ann)
    for t in results[1:]:  # attention probabilities [batch, heads, queries, keys] lose the same heads
        if t.dim() == 4 and t.shape[1] == heads:
            step.set_ann(t, [None, units, None, None])


def heads_after_surgery(module: nn.Module, spec: AttentionHeads) -> None:
    """Set the module's head count from its cut q (or fused qkv) projection (``head_dim`` is unchanged)."""
    rows = module.get_submodule(spec.projections[0]).get_parameter("weight").shape[0]
    per_head = int(getattr(module, spec.head_dim)) * (3 if isinstance(spec.qkv, str) else 1)
    setattr(module, spec.num_heads, rows // per_head)
