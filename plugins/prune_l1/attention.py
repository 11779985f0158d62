"""Attention heads as one step of the channel analysis, read from a module rule's
:class:`optkit.AttentionHeads`.

Attention whose fused qkv projection is reshaped into heads splits channels across dimensions,
which the operator rules do not follow (the channels would be left alone). A module a rule
describes as attention heads therefore runs as one opaque step: its input channels are
consumed by ``qkv``, its output channels are ``proj``'s rows, and each head is one unit: its
q, k and v rows of ``qkv`` and its columns of ``proj`` are removed together, so the reshape into
``(3, num_heads, head_dim)`` stays valid once ``num_heads`` is updated after the surgery.
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
    """The row stride of each axis of ``qkv``'s output rows laid out as ``layout``."""
    sizes = {"qkv": 3, "heads": heads, "dim": head_dim}
    strides, step = {}, 1
    for axis in reversed(layout):
        strides[axis] = step
        step *= sizes[axis]
    return strides


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
    y = next(t for t in tree_leaves(output) if isinstance(t, torch.Tensor))
    heads, head_dim = int(getattr(module, spec.num_heads)), int(getattr(module, spec.head_dim))
    prefix = f"{step.name}." if step.name else ""
    qkv_weight, proj_weight = step.param(f"{prefix}{spec.qkv}.weight"), step.param(f"{prefix}{spec.proj}.weight")
    if qkv_weight is None or proj_weight is None:
        step.opaque_unknown([x], [y], f"whose qkv/proj weights {spec.qkv}/{spec.proj} were not found")
        return
    rows, cols = qkv_weight[0], proj_weight[1]
    if rows is None or cols is None or len(rows) != 3 * heads * head_dim or len(cols) != heads * head_dim:
        step.opaque_unknown([x], [y], f"whose weights do not have 3 x {heads} heads x {head_dim} rows")
        return
    why = f"meet the input of attention `{step.name}`, which is not followed"
    X = step.ann(x)
    step.tie(X[-1], qkv_weight[1], why)
    strides = _strides(spec.layout, heads, head_dim)
    for h in range(heads):
        unit = rows[h * strides["heads"]]
        for s in range(3):
            for d in range(head_dim):
                step.uf.union(unit, rows[s * strides["qkv"] + h * strides["heads"] + d * strides["dim"]])
        for d in range(head_dim):
            step.uf.union(unit, cols[h * head_dim + d])
    qkv_bias, proj_bias = step.param(f"{prefix}{spec.qkv}.bias"), step.param(f"{prefix}{spec.proj}.bias")
    if qkv_bias is not None:
        step.tie(qkv_bias[0], rows, why)
    if proj_bias is not None:
        step.tie(proj_bias[0], proj_weight[0], why)
    step.produce(rows)
    step.produce(proj_weight[0])
    ann = list(X)
    ann[-1] = proj_weight[0]
    step.set_ann(y, ann)


def heads_after_surgery(module: nn.Module, spec: AttentionHeads) -> None:
    """Set the module's head count from its cut ``qkv`` (``head_dim`` is unchanged)."""
    qkv = getattr(module, spec.qkv)
    setattr(module, spec.num_heads, qkv.out_features // (3 * int(getattr(module, spec.head_dim))))
