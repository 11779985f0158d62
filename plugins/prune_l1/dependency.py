"""Channel dependency graph: which channels of which layers must be removed together.

The model is traced with ``torch.fx`` and its shapes propagated on an example input. Every
channel (dimension 1) of every tensor in the graph is mapped to an *atom*; atoms that must be
kept or removed together are merged in a union-find:

- a convolution (``groups == 1``) or a Linear layer *produces* fresh atoms, one per output
  channel, and *consumes* its input's atoms (its input channels / in-features);
- BatchNorm, activations, pooling, dropout and identity pass channels through;
- ``add``/``mul``/``sub``/``div`` (residuals, squeeze-and-excitation ``x * scale``) merge the
  atoms of their operands channel by channel;
- ``cat`` along channels concatenates atom lists; flatten of ``(N, C, H, W)`` repeats each
  channel's atom ``H*W`` times, so a Linear after it loses whole blocks of in-features;
- a depthwise or grouped convolution with as many outputs as inputs passes channels through
  and ties the channels of each of its groups together (whole groups are removed);
- anything else that consumes channels *fixes* them: they are left alone, and why is recorded.
  The model's input and output channels are fixed too, so the output shape never changes.

Channels whose atoms end up in one union-find set form one unit of pruning; units whose
channels come from the same set of producing layers form one :class:`ChannelGroup`.

Example:
    >>> import torchvision
    >>> graph = build_channel_graph(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    >>> len(graph.groups()) > 0
    True
"""

from __future__ import annotations

import logging
import math
import operator
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

__all__ = ["ChannelGroup", "ChannelGraph", "FixedChannels", "UntraceableModelError", "build_channel_graph"]

log = logging.getLogger(__name__)

_PASS_THROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.ZeroPad2d,
)
_PASS_THROUGH_FUNCTIONS: set[Callable[..., Any]] = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.dropout, F.dropout2d, torch.relu, torch.sigmoid, torch.tanh,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d,
    F.interpolate, F.pad,
}
_PASS_THROUGH_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "half", "to", "detach"}
#: Reductions that keep dimension 1 when it is not among the reduced dims.
_REDUCTIONS: set[Any] = {torch.mean, torch.amax, torch.sum, "mean", "amax", "sum"}
_RESHAPES: set[Any] = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
_ELEMENTWISE: set[Any] = {
    operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.isub, operator.truediv,
    torch.add, torch.mul, torch.sub, torch.div, "add", "add_", "mul", "mul_", "sub", "div",
}
#: Calls that only read metadata: they consume no channels.
_METADATA: set[Any] = {"size", "dim", "numel", getattr}


def _pass_through_function(target: Any) -> bool:
    # torchvision wraps stochastic_depth with torch.fx.wrap, so it appears as a call; in eval
    # mode it is the identity.
    return target in _PASS_THROUGH_FUNCTIONS or getattr(target, "__name__", "") == "stochastic_depth"


class UntraceableModelError(RuntimeError):
    """``torch.fx`` cannot trace the model, so its channel dependencies are unknown."""


@dataclass
class FixedChannels:
    """Channels left alone, with the reason."""

    layers: list[str]
    channels: int
    reason: str


@dataclass
class ChannelGroup:
    """Coupled channels of one or more producing layers, removed together.

    Attributes:
        producers: the layers whose output channels these are (in graph order).
        units: union-find roots; each unit is kept or removed as a whole.
        widths: channels each unit has in the first producer (1, or a convolution group's width).
    """

    producers: list[str]
    units: list[int]
    widths: list[int] = field(default_factory=list)


class _UnionFind:
    """Atoms (channel identities) merged into sets; a set may be fixed with a reason."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.reason: dict[int, str] = {}

    def new(self, count: int, reason: str | None = None) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        atoms = list(range(start, start + count))
        if reason is not None:
            for atom in atoms:
                self.reason[atom] = reason
        return atoms

    def find(self, atom: int) -> int:
        root = atom
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[atom] != root:
            self.parent[atom], atom = root, self.parent[atom]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        if ra not in self.reason and rb in self.reason:
            self.reason[ra] = self.reason[rb]

    def fix(self, atoms: Iterable[int], reason: str) -> None:
        for atom in atoms:
            self.reason.setdefault(self.find(atom), reason)

    def fixed_reason(self, atom: int) -> str | None:
        return self.reason.get(self.find(atom))


@dataclass
class ChannelGraph:
    """The channel maps of a model's prunable layers.

    Attributes:
        producers: layer name -> the atom of each output channel (convolutions, Linear).
        consumers: layer name -> the atom of each input channel / in-feature.
        channelwise: layer name -> the atom of each channel of a layer that maps channel i to
            channel i (BatchNorm, depthwise and grouped convolutions).
        unsupported: descriptions of graph nodes that fixed the channels they consume.
        called_modules: names of the modules the traced graph calls.
    """

    atoms: _UnionFind
    producers: dict[str, list[int]] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=dict)
    channelwise: dict[str, list[int]] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    called_modules: set[str] = field(default_factory=set)

    def groups(self) -> list[ChannelGroup]:
        """The prunable groups: units whose channels come from the same producing layers."""
        by_unit: dict[int, list[str]] = {}
        for name, atoms in self.producers.items():
            for atom in atoms:
                root = self.atoms.find(atom)
                if self.atoms.fixed_reason(root) is None:
                    owners = by_unit.setdefault(root, [])
                    if name not in owners:
                        owners.append(name)
        grouped: dict[tuple[str, ...], ChannelGroup] = {}
        for root, owners in by_unit.items():
            group = grouped.setdefault(tuple(owners), ChannelGroup(producers=owners, units=[]))
            group.units.append(root)
        for group in grouped.values():
            first = Counter(self.atoms.find(a) for a in self.producers[group.producers[0]])
            group.widths = [first[unit] for unit in group.units]
        return list(grouped.values())

    def fixed(self) -> list[FixedChannels]:
        """Channels of producing layers that are left alone, by layer set and reason."""
        found: dict[tuple[tuple[str, ...], str], set[int]] = {}
        owners: dict[int, list[str]] = {}
        for name, atoms in self.producers.items():
            for atom in atoms:
                root = self.atoms.find(atom)
                if self.atoms.fixed_reason(root) is not None and name not in owners.setdefault(root, []):
                    owners[root].append(name)
        for root, layers in owners.items():
            found.setdefault((tuple(layers), self.atoms.reason[root]), set()).add(root)
        return [FixedChannels(list(layers), len(roots), reason) for (layers, reason), roots in found.items()]


def build_channel_graph(model: nn.Module, example_input: torch.Tensor) -> ChannelGraph:
    """Trace ``model`` and map its channels to atoms.

    Args:
        model: the model (not changed; it is run once on ``example_input`` to learn shapes).
        example_input: an input batch of the right shape.

    Returns:
        The :class:`ChannelGraph`.

    Raises:
        UntraceableModelError: ``torch.fx`` cannot trace the model or run the traced graph.
    """
    was_training = model.training
    model.eval()
    try:
        graph_module = torch.fx.symbolic_trace(model)
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example_input)
    # torch.fx fails in many ways on untraceable Python (TraceError, TypeError, RuntimeError,
    # AttributeError, NotImplementedError, ...): any of them means "cannot analyse this model".
    except Exception as exc:  # noqa: BLE001
        raise UntraceableModelError(f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    return _ChannelTracer(graph_module).run()


def _shape(node: Any) -> tuple[int, ...] | None:
    """The shape of a node's tensor output, or ``None`` when it is not one tensor."""
    if not isinstance(node, torch.fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _nodes_in(value: Any) -> list[torch.fx.Node]:
    if isinstance(value, torch.fx.Node):
        return [value]
    if isinstance(value, (tuple, list)):
        return [n for v in value for n in _nodes_in(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _nodes_in(v)]
    return []


def _arg(node: torch.fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


class _ChannelTracer:
    """Walks the traced graph once, in order, building the atom maps."""

    def __init__(self, graph_module: torch.fx.GraphModule) -> None:
        self.gm = graph_module
        self.graph = ChannelGraph(atoms=_UnionFind())
        self.maps: dict[torch.fx.Node, list[int]] = {}

    @property
    def atoms(self) -> _UnionFind:
        return self.graph.atoms

    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            self._visit(node)
        return self.graph

    # -- maps ------------------------------------------------------------------------------
    def _map(self, node: Any) -> list[int] | None:
        """The atoms of ``node``'s channels; fixed new ones for a tensor no rule produced."""
        if not isinstance(node, torch.fx.Node):
            return None
        if node in self.maps:
            return self.maps[node]
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        self.maps[node] = self.atoms.new(shape[1], reason=f"come from `{node.name}`, which channel pruning does not follow")
        return self.maps[node]

    def _fix_inputs(self, node: torch.fx.Node, reason: str) -> None:
        for arg in _nodes_in((node.args, node.kwargs)):
            atoms = self.maps.get(arg)
            if atoms:
                self.atoms.fix(atoms, reason)

    def _unify(self, a: list[int], b: list[int]) -> None:
        for x, y in zip(a, b):
            self.atoms.union(x, y)

    def _unsupported(self, node: torch.fx.Node, what: str) -> None:
        consumes = any(arg in self.maps for arg in _nodes_in((node.args, node.kwargs)))
        if consumes:
            reason = f"are consumed by {what}, which channel pruning does not handle"
            self.graph.unsupported.append(f"{node.name}: {what}")
            log.debug("channel pruning: %s fixes its input channels", what)
            self._fix_inputs(node, reason)
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            self.maps[node] = self.atoms.new(shape[1], reason=f"come from {what}, which channel pruning does not follow")

    # -- nodes -----------------------------------------------------------------------------
    def _visit(self, node: torch.fx.Node) -> None:
        if node.op == "placeholder":
            shape = _shape(node)
            if shape is not None and len(shape) >= 2:
                self.maps[node] = self.atoms.new(shape[1], reason="are the model's input channels")
        elif node.op == "output":
            for out in _nodes_in(node.args):
                atoms = self._map(out)
                if atoms:
                    self.atoms.fix(atoms, "reach the model's output")
        elif node.op == "call_module":
            self._visit_module(node, self.gm.get_submodule(node.target))
        elif node.op in ("call_function", "call_method"):
            self._visit_call(node)
        # get_attr: parameters and buffers used directly get fixed atoms when consumed (_map).

    def _visit_module(self, node: torch.fx.Node, module: nn.Module) -> None:
        name = str(node.target)
        self.graph.called_modules.add(name)
        source = node.args[0] if node.args else None
        in_atoms = self._map(source)
        if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
            self._visit_conv(node, name, module, in_atoms)
        elif isinstance(module, nn.Linear):
            self._visit_linear(node, name, module, in_atoms)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and in_atoms is not None and len(in_atoms) == module.num_features:
            self._channelwise(node, name, in_atoms)
        elif isinstance(module, _PASS_THROUGH_MODULES) or type(module).__name__ == "StochasticDepth":
            self._pass_through(node, source, f"{type(module).__name__} `{name}`")
        elif isinstance(module, nn.Flatten):
            self._reshape(node, source, f"Flatten `{name}`")
        else:
            self._unsupported(node, f"{type(module).__name__} `{name}`")

    def _visit_conv(self, node: torch.fx.Node, name: str, conv: nn.modules.conv._ConvNd, in_atoms: list[int] | None) -> None:
        if in_atoms is None or len(in_atoms) != conv.in_channels:
            self._unsupported(node, f"{type(conv).__name__} `{name}` (input channels not on dimension 1)")
            return
        if conv.groups == 1:
            self._consume(name, in_atoms)
            self._produce(node, name, conv.out_channels)
            return
        width = conv.in_channels // conv.groups
        if conv.out_channels != conv.in_channels:
            self._unsupported(node, f"grouped {type(conv).__name__} `{name}` (groups={conv.groups}, {conv.in_channels}->{conv.out_channels} channels)")
            return
        # A depthwise/grouped convolution maps group g's channels to group g's channels: they
        # pass through, and the channels of one group are removed together (groups shrink).
        for start in range(0, len(in_atoms), width):
            for atom in in_atoms[start + 1 : start + width]:
                self.atoms.union(in_atoms[start], atom)
        self._channelwise(node, name, in_atoms)

    def _visit_linear(self, node: torch.fx.Node, name: str, linear: nn.Linear, in_atoms: list[int] | None) -> None:
        shape = _shape(node.args[0]) if node.args else None
        if in_atoms is None or shape is None or len(shape) != 2 or len(in_atoms) != linear.in_features:
            self._unsupported(node, f"Linear `{name}` on a {len(shape) if shape else '?'}-d input")
            return
        self._consume(name, in_atoms)
        self._produce(node, name, linear.out_features)

    def _consume(self, name: str, in_atoms: list[int]) -> None:
        if name in self.graph.consumers:  # a layer called twice sees the same channels both times
            self._unify(self.graph.consumers[name], in_atoms)
        else:
            self.graph.consumers[name] = list(in_atoms)

    def _produce(self, node: torch.fx.Node, name: str, count: int) -> None:
        if name not in self.graph.producers:
            self.graph.producers[name] = self.atoms.new(count)
        self.maps[node] = self.graph.producers[name]

    def _channelwise(self, node: torch.fx.Node, name: str, in_atoms: list[int]) -> None:
        if name in self.graph.channelwise:
            self._unify(self.graph.channelwise[name], in_atoms)
        else:
            self.graph.channelwise[name] = list(in_atoms)
        self.maps[node] = in_atoms

    def _pass_through(self, node: torch.fx.Node, source: Any, what: str) -> None:
        in_atoms = self._map(source)
        shape = _shape(node)
        if in_atoms is None or shape is None or len(shape) < 2 or shape[1] != len(in_atoms):
            self._unsupported(node, what)
            return
        self.maps[node] = in_atoms

    def _visit_call(self, node: torch.fx.Node) -> None:
        target = node.target
        what = f"`{getattr(target, '__name__', target)}` ({node.name})"
        source = node.args[0] if node.args else None
        if target in _METADATA:
            return
        if target in _ELEMENTWISE:
            self._elementwise(node, what)
        elif target is torch.cat:
            self._cat(node, what)
        elif target in _RESHAPES:
            self._reshape(node, source, what)
        elif target in _REDUCTIONS:
            dims = _arg(node, 1, "dim", None)
            dims = [dims] if isinstance(dims, int) else list(dims) if dims is not None else []
            rank = len(_shape(source) or ())
            keeps_channels = bool(dims) and all(isinstance(d, int) and d % max(rank, 1) >= 2 for d in dims)
            if keeps_channels:
                self._pass_through(node, source, what)
            else:
                self._unsupported(node, what)
        elif (node.op == "call_function" and _pass_through_function(target)) or (node.op == "call_method" and target in _PASS_THROUGH_METHODS):
            self._pass_through(node, source, what)
        else:
            self._unsupported(node, what)

    def _elementwise(self, node: torch.fx.Node, what: str) -> None:
        out_shape = _shape(node)
        if out_shape is None or len(out_shape) < 2:
            self._unsupported(node, what)
            return
        merged: list[int] | None = None
        for operand in node.args[:2]:
            shape = _shape(operand)
            if shape is None:  # a Python number
                continue
            channel_dim = 1 - (len(out_shape) - len(shape))
            if channel_dim < 0 or shape[channel_dim] == 1:  # broadcast along channels
                continue
            atoms = self._map(operand) if channel_dim == 1 else None
            if atoms is None or len(atoms) != out_shape[1]:
                self._unsupported(node, what)
                return
            if merged is None:
                merged = atoms
            else:
                self._unify(merged, atoms)
        if merged is None:
            self._unsupported(node, what)
            return
        self.maps[node] = merged

    def _cat(self, node: torch.fx.Node, what: str) -> None:
        tensors = _arg(node, 0, "tensors", [])
        out_shape = _shape(node)
        maps = [self._map(t) for t in tensors]
        if out_shape is None or len(out_shape) < 2 or any(m is None for m in maps):
            self._unsupported(node, what)
            return
        dim = _arg(node, 1, "dim", 0) % len(out_shape)
        if dim == 1:
            self.maps[node] = [atom for m in maps for atom in m]
        else:  # stacked along another dim: channel i of every input is channel i of the output
            for other in maps[1:]:
                self._unify(maps[0], other)
            self.maps[node] = maps[0]

    def _reshape(self, node: torch.fx.Node, source: Any, what: str) -> None:
        in_shape, out_shape = _shape(source), _shape(node)
        in_atoms = self._map(source)
        if in_atoms is None or in_shape is None or out_shape is None or len(out_shape) < 2 or out_shape[0] != in_shape[0]:
            self._unsupported(node, what)
            return
        if out_shape[1] == in_shape[1]:  # flatten(2), or a view that keeps the channels
            self.maps[node] = in_atoms
        elif len(out_shape) == 2 and out_shape[1] == math.prod(in_shape[1:]):
            # Channel-major flatten: in-feature j of what follows comes from channel j // (H*W).
            spatial = math.prod(in_shape[2:])
            self.maps[node] = [atom for atom in in_atoms for _ in range(spatial)]
        else:
            self._unsupported(node, what)
