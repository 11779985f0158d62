"""Operator rules: how each aten operator relates the channel atoms of its inputs and outputs.

A rule gets the tracer (``tr``, a :class:`Tracer`), the operator, its arguments by name (bound
to the operator's schema by :func:`arguments`, defaults filled: ``a["dim"]``, ``a["weight"]``)
and its output, runs after the operator, and annotates every output tensor. What no rule knows is handled by
``tr.unknown``: the channels it consumes are fixed, with the operator and module as the reason.
The catalogue is in the docstring of :mod:`optkit_plugins.prune_l1.trace`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import torch

from optkit_plugins.prune_l1.atoms import Ann, UnionFind
from optkit_plugins.prune_l1.recorder import op_name, tensors

__all__ = ["RULES", "Tracer", "arguments", "rule_for"]


# -- operator tables ----------------------------------------------------------------------------
_EXTRA_POINTWISE = {
    "hardswish",
    "hardswish_",
    "hardsigmoid",
    "hardsigmoid_",
    "mish",
    "mish_",
    "elu",
    "elu_",
    "leaky_relu",
    "leaky_relu_",
    "softplus",
    "threshold",
    "threshold_",
    "copy_",
    "gelu_",
    "silu_",
    "celu",
    "selu",
    "rrelu",
    "logit",
    "lerp",
    "lerp_",
    "addcmul",
    "addcdiv",
    "masked_fill_",
    "clamp_min",
    "clamp_max",
    "_prelu_kernel",
}
_PASS = {
    "clone",
    "alias",
    "detach",
    "lift_fresh",
    "_to_copy",
    "contiguous",
    "to",
    "view_as",
    "_conj",
    "resolve_conj",
    "resolve_neg",
    "dropout",
    "feature_dropout",
    "bernoulli",
    "empty_like",
    "zeros_like",
    "ones_like",
    "full_like",
    "rand_like",
    "randn_like",
    "fill_",
    "zero_",
    "bernoulli_",
    "uniform_",
    "normal_",
    "exponential_",
    "requires_grad_",
    "_softmax",
    "_log_softmax",
    "softmax",
    "log_softmax",
    "type_as",
}
_NEW = {"new_empty", "new_zeros", "new_ones", "new_full", "new_empty_strided"}
_VALUE_READS = {"_local_scalar_dense", "equal", "is_nonzero", "allclose"}
_REDUCTIONS = {
    "mean",
    "sum",
    "amax",
    "amin",
    "var_mean",
    "var",
    "std",
    "std_mean",
    "linalg_vector_norm",
    "logsumexp",
    "max",
    "min",
    "prod",
    "norm",
    "nansum",
    "nanmean",
    "all",
    "any",
}
_SPATIAL = {
    "max_pool1d": 1,
    "max_pool2d": 2,
    "max_pool3d": 3,
    "max_pool1d_with_indices": 1,
    "max_pool2d_with_indices": 2,
    "max_pool3d_with_indices": 3,
    "avg_pool1d": 1,
    "avg_pool2d": 2,
    "avg_pool3d": 3,
    "_adaptive_avg_pool2d": 2,
    "_adaptive_avg_pool3d": 3,
    "adaptive_avg_pool1d": 1,
    "adaptive_max_pool1d": 1,
    "adaptive_max_pool2d": 2,
    "adaptive_max_pool3d": 3,
    "upsample_nearest1d": 1,
    "upsample_nearest2d": 2,
    "upsample_nearest3d": 3,
    "_upsample_nearest_exact2d": 2,
    "upsample_bilinear2d": 2,
    "_upsample_bilinear2d_aa": 2,
    "upsample_bicubic2d": 2,
    "upsample_linear1d": 1,
    "upsample_trilinear3d": 3,
    "reflection_pad1d": 1,
    "reflection_pad2d": 2,
    "reflection_pad3d": 3,
    "replication_pad1d": 1,
    "replication_pad2d": 2,
    "replication_pad3d": 3,
}


class Tracer(Protocol):
    """What an operator rule may do (the tracer of :mod:`optkit_plugins.prune_l1.trace`)."""

    uf: UnionFind
    names: dict[int, str]
    strides_before: tuple[int, ...] | None

    def where(self, func: Any) -> str: ...
    def ann(self, t: torch.Tensor) -> Ann: ...
    def set(self, t: torch.Tensor, ann: Ann) -> None: ...
    def tie(self, a: list[int] | None, b: list[int] | None, reason: str) -> None: ...
    def fix(self, atoms: list[int] | None, reason: str) -> None: ...
    def fix_all(self, tensors: Iterable[torch.Tensor], reason: str) -> None: ...
    def produce(self, atoms: list[int] | None) -> None: ...
    def unknown(self, func: Any, inputs: list[torch.Tensor], outputs: list[torch.Tensor], why: str) -> None: ...
    def group_policy(self, weight_name: str, policy: tuple[str, int]) -> None: ...


def _is_pointwise(func: Any) -> bool:
    return torch.Tag.pointwise in func.tags or op_name(func) in _EXTRA_POINTWISE


# -- arguments by name --------------------------------------------------------------------------
_REQUIRED = object()
#: operator overload -> its schema's (argument name, default) pairs, in order.
_SIGNATURES: dict[Any, tuple[tuple[str, Any], ...]] = {}


def arguments(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a call of aten operator ``func`` by their schema names, defaults filled.

    Like :func:`torch.fx.operator_schemas.normalize_function` with ``normalize_to_only_use_kwargs``,
    but names are the schema's own (``self``, not ``input``) and each schema is read once: the
    trace binds every operator the model executes. It never raises, so the model's forward goes
    on whatever the call: an argument the call lacks (the dispatcher accepts no such call) is
    absent, and the rule reading it fails inside the trace's guard.
    """
    signature = _SIGNATURES.get(func)
    if signature is None:
        signature = tuple((arg.name, arg.default_value if arg.has_default_value() else _REQUIRED) for arg in func._schema.arguments)
        _SIGNATURES[func] = signature
    bound = {name: value for (name, _), value in zip(signature, args, strict=False)}
    for name, default in signature[len(args) :]:
        value = kwargs.get(name, default)
        if value is not _REQUIRED:
            bound[name] = value
    return bound


def _self(a: dict[str, Any]) -> torch.Tensor:
    """The operator's main tensor: ``self``, or ``input`` where the schema names it so."""
    return a["self"] if "self" in a else a["input"]


def _dim(d: int, ndim: int) -> int:
    return d % ndim if ndim else 0


# -- operator rules -----------------------------------------------------------------------------
def _pointwise(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    outputs = tensors(out)
    if len(outputs) != 1:
        tr.unknown(func, tensors(a), outputs, "(a pointwise op with several outputs)")
        return
    result = outputs[0]
    shape = tuple(result.shape)
    nd = len(shape)
    inputs = tensors(a)
    ann: Ann = [None] * nd
    reason = f"are combined elementwise with an untracked tensor by {tr.where(func)}"
    for d in range(nd):
        lists, blocked = [], False
        for t in inputs:
            k = d - (nd - t.dim())
            if k < 0 or (t.shape[k] == 1 and shape[d] != 1):
                continue  # broadcast
            atoms = tr.ann(t)[k]
            if atoms is None:
                blocked = blocked or shape[d] != 1
            else:
                lists.append(atoms)
        if lists and blocked:
            for atoms in lists:
                tr.fix(atoms, reason)
        elif lists:
            for atoms in lists[1:]:
                tr.tie(lists[0], atoms, reason)
            ann[d] = lists[0]
    tr.set(result, ann)


def _pass(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = _self(a)
    for t in tensors(out):
        if tuple(t.shape) == tuple(x.shape):
            tr.set(t, list(tr.ann(x)))
        else:
            tr.unknown(func, [x], [t], "(changes the shape)")


def _new(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    for t in tensors(out):
        tr.set(t, [None] * t.dim())


def _value_read(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    tr.fix_all(tensors(a), f"are read as Python values by {tr.where(func)} (data-dependent code)")


def _conv(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x, w, b = a["input"], a["weight"], a["bias"]
    transposed, groups = bool(a["transposed"]), int(a["groups"])
    X, W = tr.ann(x), tr.ann(w)
    why = f"meet the input of {tr.where(func)}, which is not followed"
    wname = tr.names.get(id(w))
    out_ch: list[int] | None
    if transposed:
        if groups != 1:
            tr.unknown(func, [x, w] + ([b] if b is not None else []), [out], "(a grouped transposed convolution)")
            return
        tr.tie(X[1], W[0], why)
        out_ch = W[1]
    elif groups == 1:
        tr.tie(X[1], W[1], why)
        out_ch = W[0]
    else:
        c_out, per_in = w.shape[0], w.shape[1]
        per_out = c_out // groups
        if X[1] is None or W[0] is None:
            for atoms in (X[1], W[0], W[1]):
                tr.fix(atoms, why)
            out_ch = None
        elif per_in == 1:
            # depthwise-like: input channel g feeds output channels g*per_out ... : whole groups are units
            for g in range(groups):
                for j in range(per_out):
                    tr.uf.union(X[1][g], W[0][g * per_out + j])
            out_ch = W[0]
            if wname:
                tr.group_policy(wname, ("unit", per_out))
        else:
            # grouped: the same position of every group is one unit, so every group keeps its width
            for g in range(1, groups):
                tr.uf.union_lists(X[1][:per_in], X[1][g * per_in : (g + 1) * per_in])
                tr.uf.union_lists(W[0][:per_out], W[0][g * per_out : (g + 1) * per_out])
            tr.tie(W[1], X[1][:per_in], why)
            out_ch = W[0]
            if wname:
                tr.group_policy(wname, ("position", groups))
    if b is not None:
        tr.tie(tr.ann(b)[0], out_ch, why)
    tr.produce(out_ch)
    tr.set(out, [X[0], out_ch] + [None] * (out.dim() - 2))


def _bias(tr: Tracer, bias: torch.Tensor | None, out: torch.Tensor, out_ann: Ann, why: str) -> None:
    if bias is None or not isinstance(bias, torch.Tensor):
        return
    B = tr.ann(bias)
    for k in range(bias.dim()):
        d = out.dim() - bias.dim() + k
        if bias.shape[k] != 1:
            tr.tie(B[k], out_ann[d], why)


def _mm(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    if "mat1" in a:  # addmm(self, mat1, mat2): self is the bias
        bias, x, y = a["self"], a["mat1"], a["mat2"]
    elif "batch1" in a:  # baddbmm(self, batch1, batch2)
        bias, x, y = a["self"], a["batch1"], a["batch2"]
    else:  # mm / bmm(self, mat2)
        bias, x, y = None, a["self"], a["mat2"]
    A, B = tr.ann(x), tr.ann(y)
    why = f"meet an untracked operand of {tr.where(func)}"
    tr.tie(A[-1], B[-2], why)
    if x.dim() == 3:
        tr.tie(A[0], B[0], why)
    ann = list(A[:-1]) + [B[-1]]
    tr.produce(B[-1])
    _bias(tr, bias, out, ann, why)
    tr.set(out, ann)


def _linear(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x, w, b = a["input"], a["weight"], a["bias"]
    X, W = tr.ann(x), tr.ann(w)
    why = f"meet the input of {tr.where(func)}, which is not followed"
    tr.tie(X[-1], W[1], why)
    ann = list(X[:-1]) + [W[0]]
    tr.produce(W[0])
    _bias(tr, b, out, ann, why)
    tr.set(out, ann)


def _batch_norm(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = a["input"]
    X = tr.ann(x)
    why = f"are normalized by {tr.where(func)} on an untracked channel dimension"
    for t in (a["weight"], a["bias"], a.get("running_mean"), a.get("running_var")):  # no_stats has no running_*
        if isinstance(t, torch.Tensor) and t.dim() == 1:
            tr.tie(tr.ann(t)[0], X[1], why)
    outputs = tensors(out)
    tr.set(outputs[0], list(X))
    for t in outputs[1:]:
        tr.set(t, [X[1]] if t.dim() == 1 and t.shape[0] == x.shape[1] else [None] * t.dim())


def _layer_norm(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x, shape, weight, bias = a["input"], list(a["normalized_shape"]), a["weight"], a["bias"]
    X = tr.ann(x)
    k = len(shape)
    why = f"are normalized by {tr.where(func)} together with untracked dimensions"
    for t in (weight, bias):
        if isinstance(t, torch.Tensor):
            T = tr.ann(t)
            for j in range(k):
                tr.tie(T[j], X[x.dim() - k + j], why)
    outputs = tensors(out)
    tr.set(outputs[0], list(X))
    for t in outputs[1:]:
        tr.set(t, list(X[: x.dim() - k]) + [None] * k)


def _group_norm(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x, weight, bias, groups = a["input"], a["weight"], a["bias"], int(a["group"])
    X = tr.ann(x)
    why = f"are normalized by {tr.where(func)} on an untracked channel dimension"
    if X[1] is not None and groups > 1:
        per = x.shape[1] // groups
        for g in range(1, groups):
            tr.uf.union_lists(X[1][:per], X[1][g * per : (g + 1) * per])  # every group keeps its width
    for t in (weight, bias):
        if isinstance(t, torch.Tensor):
            tr.tie(tr.ann(t)[0], X[1], why)
    outputs = tensors(out)
    tr.set(outputs[0], list(X))
    for t in outputs[1:]:
        tr.set(t, [None] * t.dim())


def _spatial(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = _self(a)  # ``input`` in the .vec overloads
    k = _SPATIAL[op_name(func)]
    X = tr.ann(x)
    for t in tensors(out):
        if t.dim() != x.dim():
            tr.unknown(func, [x], [t], "(changes the rank)")
            continue
        tr.set(t, list(X[: x.dim() - k]) + [None] * k)


def _constant_pad(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x, pad = a["self"], list(a["pad"])
    X = list(tr.ann(x))
    for i in range(len(pad) // 2):
        d = x.dim() - 1 - i
        if pad[2 * i] or pad[2 * i + 1]:
            tr.fix(X[d], f"are padded by {tr.where(func)}")
            X[d] = None
    tr.set(out, X)


def _reduction(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = a["self"]
    X = tr.ann(x)
    dims = a.get("dim")  # absent (sum.default), None or []: every dim; keepdim shows in the output's rank
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        dims = list(range(x.dim()))
    dims = {_dim(int(d), x.dim()) for d in ([dims] if isinstance(dims, int) else dims)}
    for t in tensors(out):
        if t.dim() == x.dim():
            ann = [None if d in dims else X[d] for d in range(x.dim())]
        elif t.dim() == x.dim() - len(dims):
            ann = [X[d] for d in range(x.dim()) if d not in dims]
        else:
            tr.unknown(func, [x], [t], "(a reduction whose shape is not understood)")
            continue
        if t.dtype in (torch.int64, torch.int32) and any(X[d] is not None for d in dims):
            tr.fix_all([x], f"are reduced to positions by {tr.where(func)}")
        tr.set(t, ann)


def _view(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = a["self"]
    tr.set(out, _reshape_ann(tr, x, out, f"are reshaped across dimensions by {tr.where(func)} (e.g. into heads)"))


def _reshape_ann(tr: Tracer, x: torch.Tensor, out: torch.Tensor, reason: str) -> Ann:
    in_shape, out_shape = tuple(x.shape), tuple(out.shape)
    X = tr.ann(x)
    result: Ann = [None] * len(out_shape)
    ins = [d for d, s in enumerate(in_shape) if s != 1]
    outs = [d for d, s in enumerate(out_shape) if s != 1]
    i = j = 0
    while i < len(ins) and j < len(outs):
        gi, go = [ins[i]], [outs[j]]
        pi, po = in_shape[ins[i]], out_shape[outs[j]]
        i, j = i + 1, j + 1
        while pi != po:
            if pi < po:
                gi.append(ins[i])
                pi *= in_shape[ins[i]]
                i += 1
            else:
                go.append(outs[j])
                po *= out_shape[outs[j]]
                j += 1
        tracked = [d for d in gi if X[d] is not None]
        if not tracked:
            continue
        if len(gi) == 1 and len(go) == 1:
            result[go[0]] = X[gi[0]]
            continue
        if len(tracked) > 1:
            for d in tracked:
                tr.fix(X[d], reason)
            continue
        t = tracked[0]
        sizes_in = [in_shape[d] for d in gi]
        position = gi.index(t)
        view = [1] * len(gi)
        view[position] = in_shape[t]
        arr = np.broadcast_to(np.asarray(X[t], dtype=np.int64).reshape(view), sizes_in)
        arr = arr.reshape([out_shape[d] for d in go])
        chosen = None
        for k, d in enumerate(go):
            moved = np.moveaxis(arr, k, 0).reshape(out_shape[d], -1)
            if (moved == moved[:, :1]).all():
                chosen = (d, moved[:, 0].tolist())
                break
        if chosen is None:
            tr.fix(X[t], reason)
        else:
            result[chosen[0]] = chosen[1]
    return result


def _expand(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = a["self"]
    X = tr.ann(x)
    lead = out.dim() - x.dim()
    ann = [None] * lead + [X[k] if x.shape[k] == out.shape[lead + k] else None for k in range(x.dim())]
    tr.set(out, ann)


def _permute(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = a["self"]
    X = tr.ann(x)
    if "dims" in a:  # permute
        order = [_dim(d, x.dim()) for d in a["dims"]]
    else:
        order = list(range(x.dim()))
        if "dim0" in a:  # transpose
            d0, d1 = _dim(a["dim0"], x.dim()), _dim(a["dim1"], x.dim())
            order[d0], order[d1] = order[d1], order[d0]
        else:  # t
            order = order[::-1]
    tr.set(out, [X[d] for d in order])


def _unsqueeze(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = a["self"]
    X = list(tr.ann(x))
    d = _dim(a["dim"], out.dim())
    tr.set(out, X[:d] + [None] + X[d:])


def _squeeze(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = a["self"]
    X = tr.ann(x)
    if "dim" in a:  # squeeze.dim / squeeze.dims
        given = [a["dim"]] if isinstance(a["dim"], int) else list(a["dim"])
        dims = {_dim(d, x.dim()) for d in given}
    else:
        dims = set(range(x.dim()))
    gone = {d for d in dims if x.shape[d] == 1}
    tr.set(out, [X[d] for d in range(x.dim()) if d not in gone])


def _select(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = a["self"]
    d = _dim(a["dim"], x.dim())
    X = tr.ann(x)
    tr.fix(X[d], f"are indexed one by one by {tr.where(func)}")
    tr.set(out, [X[k] for k in range(x.dim()) if k != d])


def _without_dim(tr: Tracer, x: torch.Tensor, out: torch.Tensor, d: int, reason: str | None) -> None:
    """``out`` keeps ``x``'s atoms except along ``d``, whose channels are fixed for ``reason`` (if any)."""
    X = list(tr.ann(x))
    if reason is not None:
        tr.fix(X[d], reason)
        X[d] = None
    tr.set(out, X)


def _slice(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = a["self"]
    d = _dim(a["dim"], x.dim())
    partial = out.shape[d] != x.shape[d]
    _without_dim(tr, x, out, d, f"are sliced by {tr.where(func)} (a partial slice of channels)" if partial else None)


def _split(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = a["self"]
    pieces = tensors(out)
    d = _dim(a["dim"], x.dim())
    X = tr.ann(x)
    sizes = [p.shape[d] for p in pieces]
    atoms = X[d]
    if atoms is not None and len(set(sizes)) > 1:
        tr.fix(atoms, f"are split into unequal parts by {tr.where(func)}")
        atoms = None
    start = 0
    for p, size in zip(pieces, sizes, strict=True):
        ann = list(X)
        ann[d] = atoms[start : start + size] if atoms is not None else None
        start += size
        tr.set(p, ann)
    if atoms is not None:
        # equal parts (chunk): the same position of every part is one unit, so parts stay equal
        first = atoms[: sizes[0]]
        for k in range(1, len(sizes)):
            tr.uf.union_lists(first, atoms[k * sizes[0] : (k + 1) * sizes[0]])


def _unbind(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = a["self"]
    d = _dim(a["dim"], x.dim())
    X = tr.ann(x)
    tr.fix(X[d], f"are unbound one by one by {tr.where(func)}")
    for t in tensors(out):
        tr.set(t, [X[k] for k in range(x.dim()) if k != d])


def _cat(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    parts = [t for t in a["tensors"] if not (t.dim() == 1 and t.shape[0] == 0)]  # cat skips legacy empty tensors
    d = _dim(a["dim"], out.dim())
    anns = [tr.ann(t) for t in parts]
    reason = f"are concatenated with untracked tensors by {tr.where(func)}"
    result: Ann = [None] * out.dim()
    for k in range(out.dim()):
        if k == d:
            if any(ann[k] is not None for ann in anns):
                atoms: list[int] = []
                for t, ann in zip(parts, anns, strict=True):
                    if ann[k] is not None:
                        atoms.extend(ann[k])
                    else:
                        fresh = tr.uf.new(t.shape[k])
                        tr.uf.fix(fresh, reason)
                        atoms.extend(fresh)
                result[k] = atoms
            continue
        lists = [ann[k] for ann in anns]
        if any(x is not None for x in lists):
            for other in lists[1:]:
                tr.tie(lists[0], other, reason)
            result[k] = lists[0] if lists[0] is not None and all(x is not None for x in lists) else None
    tr.set(out, result)


def _stack(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    parts = list(a["tensors"])
    d = _dim(a["dim"], out.dim())
    anns = [tr.ann(t) for t in parts]
    reason = f"are stacked with untracked tensors by {tr.where(func)}"
    result: Ann = []
    for k in range(parts[0].dim()):
        lists = [ann[k] for ann in anns]
        for other in lists[1:]:
            tr.tie(lists[0], other, reason)
        result.append(lists[0] if all(x is not None for x in lists) else None)
    tr.set(out, result[:d] + [None] + result[d:])


def _index_select(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x = a["self"]
    d = _dim(a["dim"], x.dim())
    _without_dim(tr, x, out, d, f"are indexed by {tr.where(func)}")


def _dims_op(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    """roll/flip/cumsum: positions along the given dims move, so channels there are fixed."""
    x = a["self"]
    dims = a["dims"] if "dims" in a else a["dim"]  # roll, flip: dims; cumsum: dim
    dims = [dims] if isinstance(dims, int) else list(dims) or list(range(x.dim()))  # roll without dims: flattened
    X = list(tr.ann(x))
    for d in dims:
        d = _dim(d, x.dim())
        tr.fix(X[d], f"are reordered by {tr.where(func)}")
        X[d] = None
    tr.set(out, X)


def _repeat(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    x, reps = a["self"], list(a["repeats"])
    X = tr.ann(x)
    lead = len(reps) - x.dim()
    ann: Ann = [None] * lead
    for k in range(x.dim()):
        if reps[lead + k] != 1:
            tr.fix(X[k], f"are repeated by {tr.where(func)}")
            ann.append(None)
        else:
            ann.append(X[k])
    tr.set(out, ann)


def _sdpa(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    q, k, v = a["query"], a["key"], a["value"]
    Q, K, V = tr.ann(q), tr.ann(k), tr.ann(v)
    why = f"meet an untracked operand of {tr.where(func)}"
    for d in range(q.dim() - 2):
        tr.tie(Q[d], K[d], why)
        tr.tie(Q[d], V[d], why)
    tr.tie(Q[-1], K[-1], why)
    tr.tie(K[-2], V[-2], why)
    outputs = tensors(out)
    tr.set(outputs[0], list(Q[:-1]) + [V[-1]])
    for t in outputs[1:]:
        tr.set(t, list(Q[: t.dim()]) if t.dim() <= q.dim() - 1 else [None] * t.dim())
    mask = a.get("attn_mask", a.get("attn_bias"))  # the CPU kernel's attn_mask, the CUDA kernels' attn_bias
    if isinstance(mask, torch.Tensor):
        tr.fix_all([mask], why)


def _as_strided(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    """A restride that keeps the shape and the order of every dim larger than 1 keeps the atoms."""
    x = a["self"]
    before = tr.strides_before
    after = tuple(out.stride())
    big = [d for d in range(x.dim()) if x.shape[d] > 1]
    same_order = before is not None and sorted(big, key=lambda d: -before[d]) == sorted(big, key=lambda d: -after[d])
    dense = all(after[d] > 0 for d in big) and len({after[d] for d in big}) == len(big)
    if tuple(out.shape) == tuple(x.shape) and same_order and dense:
        tr.set(out, list(tr.ann(x)))
    else:
        tr.unknown(func, [x], [out], "(a strided view that moves elements)")


def _embedding(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    w, idx = a["weight"], a["indices"]
    W = tr.ann(w)
    tr.fix(W[0], f"are looked up by {tr.where(func)}")
    tr.fix_all([idx], f"are used as indices by {tr.where(func)}")
    tr.set(out, [None] * idx.dim() + [W[1]])


def _native_dropout(tr: Tracer, func: Any, a: dict[str, Any], out: Any) -> None:
    X = tr.ann(a["input"])
    for t in tensors(out):
        tr.set(t, list(X))


RULES: dict[str, Callable[..., None]] = {
    "convolution": _conv,
    "mm": _mm,
    "addmm": _mm,
    "bmm": _mm,
    "baddbmm": _mm,
    "linear": _linear,
    "native_batch_norm": _batch_norm,
    "_native_batch_norm_legit": _batch_norm,
    "_native_batch_norm_legit_no_training": _batch_norm,
    "_native_batch_norm_legit_functional": _batch_norm,
    "native_layer_norm": _layer_norm,
    "native_group_norm": _group_norm,
    "constant_pad_nd": _constant_pad,
    "view": _view,
    "_unsafe_view": _view,
    "reshape": _view,
    "_reshape_alias": _view,
    "view_copy": _view,
    "expand": _expand,
    "permute": _permute,
    "transpose": _permute,
    "t": _permute,
    "unsqueeze": _unsqueeze,
    "squeeze": _squeeze,
    "select": _select,
    "slice": _slice,
    "narrow": _slice,
    "split": _split,
    "split_with_sizes": _split,
    "unsafe_split": _split,
    "unsafe_split_with_sizes": _split,
    "unbind": _unbind,
    "cat": _cat,
    "stack": _stack,
    "index_select": _index_select,
    "roll": _dims_op,
    "flip": _dims_op,
    "cumsum": _dims_op,
    "repeat": _repeat,
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "_scaled_dot_product_efficient_attention": _sdpa,
    "_scaled_dot_product_flash_attention": _sdpa,
    "_scaled_dot_product_cudnn_attention": _sdpa,
    "embedding": _embedding,
    "as_strided": _as_strided,
    "as_strided_": _as_strided,
    "native_dropout": _native_dropout,
}
RULES.update({n: _spatial for n in _SPATIAL})
RULES.update({n: _reduction for n in _REDUCTIONS})
RULES.update({n: _pass for n in _PASS})
RULES.update({n: _new for n in _NEW})
RULES.update({n: _value_read for n in _VALUE_READS})


def rule_for(func: Any) -> Callable[..., None] | None:
    """The rule of an aten operator: pointwise first (``max.other`` is pointwise, ``max.dim`` is not)."""
    return _pointwise if _is_pointwise(func) else RULES.get(op_name(func))
