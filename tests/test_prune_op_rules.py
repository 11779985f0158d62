"""Every operator rule of channel pruning, one case each, through the normal planner (16x16 inputs).

A case is ``conv_in -> op -> conv_out`` (``conv_side`` gives binary operators a second producer),
with the operator called as ``torch.ops.aten.<name>``. Each case is pruned by
:class:`~optkit_plugins.prune_l1.channels.ChannelPlanner` (trace in eval and train mode, cut, replay)
at ``amount: 0.5`` and checked:

- the operator ran under the recorder, and its rule did not fail on its arguments;
- channels were removed and the pruned model gives the original output shapes;
- masking: the unpruned model with every removed channel zeroed (the rows that produce it, the
  norm and bias entries that follow it, and the columns of the layers that consume it) computes
  what the pruned model computes (``rtol=1e-4``, ``atol=1e-5`` times the output's magnitude: the
  two run convolutions of different widths, so sums are taken in another order).

Normalisations over the channels themselves (LayerNorm over C, GroupNorm) compute their statistics
over the channels kept, which no zeroing reproduces: those cases say so and check shapes only.
``test_every_rule_has_a_case`` fails when a rule is added to the table without a case here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _len_torch_dispatch_stack, _pop_mode_temporarily

from optkit_plugins.prune_l1 import plan as planning
from optkit_plugins.prune_l1.channels import ChannelPlanner
from optkit_plugins.prune_l1.op_rules import RULES, arguments
from optkit_plugins.prune_l1.recorder import Recorder, op_name

aten = torch.ops.aten
X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
C = 8  # conv_in's channels: the group every case prunes


def handed_over(op: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``op`` so that a dispatch mode sees it as one operator.

    In eager mode torch decomposes CompositeImplicitAutograd operators (``contiguous``,
    ``dropout``, ``softmax.int``, ``linear`` ...) before any dispatch mode sees them; they reach one
    under other dispatch stacks (functionalization, export). This hands the operator to the active
    mode exactly as the dispatcher would (with the mode popped while it runs).
    """
    if _len_torch_dispatch_stack() == 0:
        return op(*args, **kwargs)
    with _pop_mode_temporarily() as mode:
        return mode.__torch_dispatch__(op, (), args, kwargs)


def as_4d(t: torch.Tensor, rank: int) -> torch.Tensor:
    """A 3-d (N, C, L) or 5-d (N, C, D, H, W) result as (N, C, H', W') for conv_out."""
    return t.unsqueeze(2) if rank == 3 else t.flatten(2, 3) if rank == 5 else t


class Fn(nn.Module):
    """A parameter-free operator case: ``fn(y, z)``, y from conv_in (+ReLU), z from conv_side."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.fn(y, z)


class Case(nn.Module):
    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, C, 3, padding=1)
        self.conv_side = nn.Conv2d(3, C, 1)
        self.op = op
        with torch.no_grad():
            width = op.eval()(torch.rand(1, C, 16, 16), torch.rand(1, C, 16, 16)).shape[1]
        self.conv_out = nn.Conv2d(width, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.op(F.relu(self.conv_in(x)), self.conv_side(x)))


# -- operators with parameters ------------------------------------------------------------------
class Convolutions(nn.Module):
    """Plain, depthwise, grouped and transposed convolutions in a row."""

    def __init__(self) -> None:
        super().__init__()
        self.plain = nn.Conv2d(C, C, 3, padding=1)
        self.depthwise = nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False)
        self.grouped = nn.Conv2d(C, C, 1, groups=2)
        self.transposed = nn.ConvTranspose2d(C, C, 1)

    def forward(self, y, z):
        return self.transposed(self.grouped(self.depthwise(F.relu(self.plain(y)))))


class Matmul(nn.Module):
    """mm / addmm / bmm / baddbmm with a weight parameter, on (N*H*W, C) or (N, H*W, C) rows."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.weight = nn.Parameter(torch.randn(C, C) / C**0.5)
        self.bias = nn.Parameter(torch.randn(C))

    def forward(self, y, z):
        n, c, h, w = y.shape
        rows = y.permute(0, 2, 3, 1)
        if self.name in ("mm", "addmm"):
            flat = rows.reshape(n * h * w, c)
            out = aten.mm(flat, self.weight) if self.name == "mm" else aten.addmm(self.bias, flat, self.weight)
        else:
            seq, weight = rows.reshape(n, h * w, c), self.weight.expand(n, *self.weight.shape)
            out = aten.bmm(seq, weight) if self.name == "bmm" else aten.baddbmm(self.bias, seq, weight)
        return out.reshape(n, h, w, out.shape[-1]).permute(0, 3, 1, 2)


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(C, C) / C**0.5), nn.Parameter(torch.randn(C))

    def forward(self, y, z):
        return handed_over(aten.linear.default, y.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)


class BatchNorm(nn.Module):
    """One of aten's batch norm operators, called directly with the module's parameters and statistics."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.weight, self.bias = nn.Parameter(torch.rand(C) + 0.5), nn.Parameter(torch.randn(C))
        self.register_buffer("running_mean", torch.randn(C))
        self.register_buffer("running_var", torch.rand(C) + 0.5)

    def forward(self, y, z):
        w, b, mean, var = self.weight, self.bias, self.running_mean, self.running_var
        if self.name == "native_batch_norm":
            return aten.native_batch_norm(y, w, b, mean, var, False, 0.1, 1e-5)[0]
        if self.name == "_native_batch_norm_legit":
            return aten._native_batch_norm_legit(y, w, b, mean, var, False, 0.1, 1e-5)[0]
        if self.name == "_native_batch_norm_legit_no_training":
            return aten._native_batch_norm_legit_no_training(y, w, b, mean, var, 0.1, 1e-5)[0]
        return aten._native_batch_norm_legit_functional(y, w, b, mean, var, False, 0.1, 1e-5)[0]


class LayerNorms(nn.Module):
    """LayerNorm over the width (channels pass through) and, in ``over_channels``, over C (channels last)."""

    def __init__(self, over_channels: bool) -> None:
        super().__init__()
        self.over_channels = over_channels
        self.spatial = nn.LayerNorm(16)
        self.channels = nn.LayerNorm(C)

    def forward(self, y, z):
        y = aten.native_layer_norm(y, [16], self.spatial.weight, self.spatial.bias, 1e-5)[0]
        if self.over_channels:
            last = y.permute(0, 2, 3, 1)
            y = aten.native_layer_norm(last, [last.shape[-1]], self.channels.weight, self.channels.bias, 1e-5)[0].permute(0, 3, 1, 2)
        return y


class GroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(2, C)

    def forward(self, y, z):
        n, c, h, w = y.shape
        return aten.native_group_norm(y, self.norm.weight, self.norm.bias, n, c, h * w, 2, 1e-5)[0]


class Embedding(nn.Module):
    """An embedding table whose rows are added to the channels (its columns follow them)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, C))
        self.register_buffer("positions", torch.arange(256).reshape(16, 16) % 10)

    def forward(self, y, z):
        return y + aten.embedding(self.table, self.positions).permute(2, 0, 1)


def _attention(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def attend(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        n, c, h, w = y.shape
        # (N, 1 head, H*W, C): channels are the head dim; the kernels want the head dim contiguous
        q, k, v = (t.flatten(2).transpose(1, 2).unsqueeze(1).contiguous() for t in (y, z, y * z))
        if name == "_scaled_dot_product_flash_attention_for_cpu":
            out = F.scaled_dot_product_attention(q, k, v, scale=0.25)
        elif name == "_scaled_dot_product_efficient_attention":
            out = aten._scaled_dot_product_efficient_attention(q, k, v, None, False, scale=0.25)[0]
        elif name == "_scaled_dot_product_flash_attention":
            out = aten._scaled_dot_product_flash_attention(q, k, v, scale=0.25)[0]
        else:
            out = aten._scaled_dot_product_cudnn_attention(q, k, v, None, False, scale=0.25)[0]
        return out.squeeze(1).transpose(1, 2).reshape(n, c, h, w)

    return attend


# -- the cases ----------------------------------------------------------------------------------
def _spatial(name: str, rank: int, *rest: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``aten.<name>(y as a rank-d tensor, *rest)``; the first output, back in 4-d."""

    def run(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = y.flatten(2) if rank == 3 else y.unsqueeze(2) if rank == 5 else y
        out = handed_over(getattr(aten, name).default, x, *rest)  # max_pool2d, avg_pool1d ... are composite
        return as_4d(out[0] if isinstance(out, tuple) else out, rank)

    return run


SPATIAL = {
    "max_pool1d": (3, [2]),
    "max_pool2d": (4, [2, 2]),
    "max_pool3d": (5, [1, 2, 2]),
    "max_pool1d_with_indices": (3, [2]),
    "max_pool2d_with_indices": (4, [2, 2]),
    "max_pool3d_with_indices": (5, [1, 2, 2]),
    "avg_pool1d": (3, [2]),
    "avg_pool2d": (4, [2, 2]),
    "avg_pool3d": (5, [1, 2, 2]),
    "_adaptive_avg_pool2d": (4, [4, 4]),
    "_adaptive_avg_pool3d": (5, [1, 4, 4]),
    "adaptive_avg_pool1d": (3, [16]),
    "adaptive_max_pool1d": (3, [16]),
    "adaptive_max_pool2d": (4, [4, 4]),
    "adaptive_max_pool3d": (5, [1, 4, 4]),
    "upsample_nearest1d": (3, [512]),
    "upsample_nearest2d": (4, [32, 32]),
    "upsample_nearest3d": (5, [1, 32, 32]),
    "_upsample_nearest_exact2d": (4, [32, 32]),
    "upsample_bilinear2d": (4, [32, 32], False),
    "_upsample_bilinear2d_aa": (4, [32, 32], False),
    "upsample_bicubic2d": (4, [32, 32], False),
    "upsample_linear1d": (3, [512], False),
    "upsample_trilinear3d": (5, [1, 32, 32], False),
    "reflection_pad1d": (3, [1, 1]),
    "reflection_pad2d": (4, [1, 1, 1, 1]),
    "reflection_pad3d": (5, [1, 1, 1, 1, 0, 0]),
    "replication_pad1d": (3, [1, 1]),
    "replication_pad2d": (4, [1, 1, 1, 1]),
    "replication_pad3d": (5, [1, 1, 1, 1, 0, 0]),
}

#: Reductions over the width (dim 3, keepdim), each through the overload that names ``dim``.
REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sum": lambda y: aten.sum.dim_IntList(y, [3], True),
    "mean": lambda y: aten.mean.dim(y, [3], True),
    "nansum": lambda y: aten.nansum(y, [3], True),
    "nanmean": lambda y: handed_over(aten.nanmean.default, y, [3], True),
    "amax": lambda y: aten.amax(y, [3], True),
    "amin": lambda y: aten.amin(y, [3], True),
    "max": lambda y: aten.max.dim(y, 3, True)[0],
    "min": lambda y: aten.min.dim(y, 3, True)[0],
    "prod": lambda y: aten.prod.dim_int(torch.sigmoid(y), 3, True),
    "var": lambda y: aten.var.correction(y, [3], correction=0, keepdim=True),
    "std": lambda y: aten.std.correction(y, [3], correction=1, keepdim=True),
    "var_mean": lambda y: sum(aten.var_mean.correction(y, [3], keepdim=True)),
    "std_mean": lambda y: sum(aten.std_mean.correction(y, [3], keepdim=True)),
    "logsumexp": lambda y: aten.logsumexp(y, [3], True),
    "linalg_vector_norm": lambda y: aten.linalg_vector_norm(y, 2, [3], True),
    "norm": lambda y: aten.norm.ScalarOpt_dim(y, 2, [3], True),  # p comes before dim: read by name
    "any": lambda y: aten.any.dim(y > 0.5, 3, True).to(y.dtype),
    "all": lambda y: aten.all.dim(y > 0.5, 3, True).to(y.dtype),
}

#: Operators that keep their input's shape and atoms (randomness with p=0 or on a side branch).
PASS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "clone": lambda y, z: aten.clone(y),
    "alias": lambda y, z: aten.alias(y),
    "detach": lambda y, z: aten.detach(y),
    "lift_fresh": lambda y, z: aten.lift_fresh(y),
    "_to_copy": lambda y, z: aten._to_copy(y, dtype=torch.float64).float(),
    "contiguous": lambda y, z: handed_over(aten.contiguous.default, y),
    "to": lambda y, z: handed_over(aten.to.dtype, y, torch.float32),
    "view_as": lambda y, z: handed_over(aten.view_as.default, y, z),
    "_conj": lambda y, z: aten.abs(aten._conj(y * 1j)),
    "resolve_conj": lambda y, z: handed_over(aten.resolve_conj.default, y),
    "resolve_neg": lambda y, z: handed_over(aten.resolve_neg.default, y),
    "dropout": lambda y, z: handed_over(aten.dropout.default, y, 0.0, True),
    "feature_dropout": lambda y, z: handed_over(aten.feature_dropout.default, y, 0.0, True),
    "bernoulli": lambda y, z: y * aten.bernoulli.p(torch.ones_like(z), 1.0),
    "bernoulli_": lambda y, z: y * aten.bernoulli_.float(torch.ones_like(z), 1.0),
    "empty_like": lambda y, z: y + aten.empty_like(z).fill_(0.0),
    "zeros_like": lambda y, z: y + aten.zeros_like(z),
    "ones_like": lambda y, z: y * aten.ones_like(z),
    "full_like": lambda y, z: y * aten.full_like(z, 2.0),
    "rand_like": lambda y, z: y + 0.0 * aten.rand_like(z),
    "randn_like": lambda y, z: y + 0.0 * aten.randn_like(z),
    "fill_": lambda y, z: y + aten.fill_.Scalar(z.clone(), 1.0),
    "zero_": lambda y, z: y + aten.zero_(z.clone()),
    "uniform_": lambda y, z: y + 0.0 * aten.uniform_(z.clone()),
    "normal_": lambda y, z: y + 0.0 * aten.normal_(z.clone()),
    "exponential_": lambda y, z: y + 0.0 * aten.exponential_(z.clone()),
    "requires_grad_": lambda y, z: handed_over(aten.requires_grad_.default, y.clone(), False),
    "_softmax": lambda y, z: aten._softmax(y, 3, False),
    "_log_softmax": lambda y, z: aten._log_softmax(y, 3, False),
    "softmax": lambda y, z: handed_over(aten.softmax.int, y, 3),
    "log_softmax": lambda y, z: handed_over(aten.log_softmax.int, y, 3),
    "type_as": lambda y, z: handed_over(aten.type_as.default, y, z),
}

#: New tensors from a tensor's metadata: no channels of their own.
NEW: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "new_empty": lambda y, z: y + aten.new_empty(y, [1]).fill_(0.0),
    "new_zeros": lambda y, z: y + aten.new_zeros(y, [1]),
    "new_ones": lambda y, z: y * aten.new_ones(y, [1]),
    "new_full": lambda y, z: y * aten.new_full(y, [1], 2.0),
    "new_empty_strided": lambda y, z: y + aten.new_empty_strided(y, [1], [1]).fill_(0.0),
}

#: Reads of values as Python numbers: data-dependent code fixes the channels read (z's, not y's).
VALUE_READS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "_local_scalar_dense": lambda y, z: y * (1.0 + 0.0 * aten._local_scalar_dense(z.sum())),
    "is_nonzero": lambda y, z: y * (1.0 if handed_over(aten.is_nonzero.default, z.sum() > -1e9) else 0.5),
    "equal": lambda y, z: y * (1.0 if aten.equal(z, z) else 0.5),
    "allclose": lambda y, z: y * (1.0 if aten.allclose(z, z) else 0.5),
}


def _views(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(N, C, H, W) -> (N, C, H*W) by ``name`` -> back by ``view``."""

    def run(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        n, c, h, w = y.shape
        flat = [n, c, h * w]
        if name == "reshape":
            out = handed_over(aten.reshape.default, y, flat)
        elif name == "_reshape_alias":
            out = aten._reshape_alias(y, flat, [c * h * w, h * w, 1])
        else:
            out = getattr(aten, name)(y, flat)
        return out.view(n, c, h, w)

    return run


def _transposes(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def run(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        n, c, h, w = y.shape
        if name == "permute":
            return aten.permute(aten.permute(y, [0, 2, 3, 1]), [0, 3, 1, 2])
        if name == "transpose":
            return aten.transpose.int(aten.transpose.int(y, 1, 3), 3, 1)
        rows = y.permute(0, 2, 3, 1).reshape(n * h * w, c)
        return aten.t(aten.t(rows)).reshape(n, h, w, c).permute(0, 3, 1, 2)

    return run


def _splits(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Equal parts of the channels, swapped: the same position of every part is one unit."""

    def run(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        half = y.shape[1] // 2
        if name in ("split", "unsafe_split"):
            parts = getattr(aten, name).Tensor(y, half, 1)
        else:
            parts = getattr(aten, name)(y, [half, half], 1)
        return torch.cat([parts[1], parts[0]], 1)

    return run


OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "constant_pad_nd": lambda y, z: aten.constant_pad_nd(y, [1, 1, 1, 1], 0.5),
    "expand": lambda y, z: y * aten.expand(y.mean((2, 3), keepdim=True), [y.shape[0], y.shape[1], 16, 16]),
    "unsqueeze": lambda y, z: aten.unsqueeze(y, 2).flatten(2, 3),
    "squeeze": lambda y, z: aten.squeeze.dim(y.unsqueeze(2), 2),
    "select": lambda y, z: aten.select.int(y, 3, 0).unsqueeze(3),
    "slice": lambda y, z: aten.slice.Tensor(aten.slice.Tensor(y, 2, 2, 10), 1, 0, y.shape[1]),
    "narrow": lambda y, z: handed_over(aten.narrow.default, y, 3, 4, 8),
    "unbind": lambda y, z: torch.stack(aten.unbind.int(y, 2), 2),
    "cat": lambda y, z: aten.cat([y, z], 1),
    "stack": lambda y, z: aten.stack([y, z], 2).flatten(2, 3),
    "index_select": lambda y, z: aten.index_select(y, 2, torch.arange(0, 16, 2)),
    "roll": lambda y, z: aten.roll(y, [1], [3]),
    "flip": lambda y, z: aten.flip(y, [2, 3]),
    "cumsum": lambda y, z: aten.cumsum(y, 3),
    "repeat": lambda y, z: aten.repeat(y, [1, 1, 2, 1]),
    "as_strided": lambda y, z: aten.as_strided(y, list(y.shape), list(y.stride())),
    "as_strided_": lambda y, z: aten.as_strided_(y.clone(), list(y.shape), list(y.stride())),
    "native_dropout": lambda y, z: aten.native_dropout(y, 0.0, True)[0],
    # the pointwise rule (aten's ``pointwise`` tag and _EXTRA_POINTWISE): a residual, a gate, an activation
    "pointwise:add": lambda y, z: y + z,
    "pointwise:mul": lambda y, z: y * torch.sigmoid(z),
    "pointwise:hardswish": lambda y, z: aten.hardswish(y),
}


@dataclass(frozen=True)
class Spec:
    """A case: the operator module, and whether zeroing the removed channels reproduces the cut."""

    make: Callable[[], nn.Module]
    exact: bool = True
    cuda: bool = False


CUDA_ONLY = {"_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention"}
SPECS: dict[str, Spec] = {
    "convolution": Spec(Convolutions),
    **{name: Spec(lambda name=name: Matmul(name)) for name in ("mm", "addmm", "bmm", "baddbmm")},
    "linear": Spec(Linear),
    **{
        name: Spec(lambda name=name: BatchNorm(name))
        for name in (
            "native_batch_norm",
            "_native_batch_norm_legit",
            "_native_batch_norm_legit_no_training",
            "_native_batch_norm_legit_functional",
        )
    },
    "native_layer_norm": Spec(lambda: LayerNorms(over_channels=False)),
    # statistics over the channels kept: no zeroing reproduces them
    "native_layer_norm:channels": Spec(lambda: LayerNorms(over_channels=True), exact=False),
    "native_group_norm": Spec(GroupNorm, exact=False),
    "embedding": Spec(Embedding),
    **{
        name: Spec(lambda name=name: Fn(_attention(name)), cuda=name in CUDA_ONLY)
        for name in ("_scaled_dot_product_flash_attention_for_cpu", *CUDA_ONLY)
    },
    **{name: Spec(lambda name=name: Fn(_views(name))) for name in ("view", "_unsafe_view", "reshape", "_reshape_alias", "view_copy")},
    **{name: Spec(lambda name=name: Fn(_transposes(name))) for name in ("permute", "transpose", "t")},
    **{
        name: Spec(lambda name=name: Fn(_splits(name))) for name in ("split", "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes")
    },
    **{name: Spec(lambda name=name: Fn(_spatial(name, *SPATIAL[name]))) for name in SPATIAL},
    **{name: Spec(lambda fn=fn: Fn(lambda y, z: fn(y))) for name, fn in REDUCTIONS.items()},
    **{name: Spec(lambda fn=fn: Fn(fn)) for name, fn in {**PASS, **NEW, **VALUE_READS, **OPS}.items()},
}


class _Seen(Recorder):
    """The operators a model runs outside opaque modules, recorded steps or not."""

    def __init__(self) -> None:
        super().__init__(lambda name, module: None)
        self.names: set[str] = set()

    def op(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.names.add(op_name(func))
        return func(*args, **kwargs)


@torch.no_grad()
def _masked(model: nn.Module, planner: ChannelPlanner, removed: set[int]) -> nn.Module:
    """A copy of ``model`` with every removed channel's parameter entries zeroed."""
    masked = copy.deepcopy(model)
    an = planner.an
    for name, tensor in masked.named_parameters():
        for dim, atoms in enumerate(an.tensor_anns.get(name, [])):
            gone = [i for i, atom in enumerate(atoms or []) if an.uf.find(atom) in removed]
            if gone:
                tensor.index_fill_(dim, torch.tensor(gone), 0.0)
    return masked


def test_arguments_are_bound_by_schema_name_with_defaults():
    x = torch.ones(2, 3)
    assert arguments(aten.sum.dim_IntList, (x, [1]), {"keepdim": True}) == {"self": x, "dim": [1], "keepdim": True, "dtype": None}
    # p comes before dim in norm.ScalarOpt_dim; var.correction takes keepdim by keyword only
    assert arguments(aten.norm.ScalarOpt_dim, (x, 2, [1]), {})["dim"] == [1]
    assert arguments(aten.var.correction, (x,), {"correction": 0}) == {"self": x, "dim": None, "correction": 0, "keepdim": False}
    # a call without a required argument (which the dispatcher refuses) binds what it has
    assert arguments(aten.convolution.default, (x,), {}) == {"input": x}


def test_every_rule_has_a_case():
    assert set(RULES) <= {name.partition(":")[0] for name in SPECS}, sorted(set(RULES) - set(SPECS))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_rule(name: str):
    spec = SPECS[name]
    if spec.cuda and not torch.cuda.is_available():
        pytest.skip("a CUDA kernel: runs where CUDA is available")
    device = "cuda" if spec.cuda else "cpu"
    torch.manual_seed(0)
    model = Case(spec.make()).to(device).eval()
    x = X.to(device)
    op, _, variant = name.partition(":")
    runs = op if op in RULES else variant  # "pointwise:add" runs aten.add

    seen = _Seen()
    reference = seen.run(model, (x,))
    assert runs in seen.names, f"aten.{runs} did not run: {sorted(seen.names)}"

    planner = ChannelPlanner(model, x, rules={})
    failed = [key for key in planner.an.unsupported if "analysis failed" in key]
    assert not failed, failed
    cut = planner.cut(lambda base, an, groups: planning.choose_removed(base, an, groups, 0.5))
    assert cut.removed, f"nothing was pruned: {[f.reason for f in planning.fixed_of(planner.an)][:3]}"
    width = cut.model.conv_in.out_channels
    assert width == C // 2, f"conv_in keeps {width} of {C} channels; back-offs: {planner.backoffs}"

    with torch.no_grad():
        pruned = cut.model.eval()(x)
    assert pruned.shape == reference.shape
    if spec.exact:
        with torch.no_grad():
            masked = _masked(model, planner, cut.removed).eval()(x)
        scale = float(masked.abs().max()) or 1.0
        torch.testing.assert_close(pruned, masked, rtol=1e-4, atol=1e-5 * scale)
