"""Find the classifier head of a classification model, structurally.

The head is the layer whose output *is* the model's output: the graph of the model (traced with
``torch.fx``, nothing is run) is walked back from the output through layers that do not mix
classes (flatten, dropout, identity, activations, global pooling, reshapes) to the first layer
with weights. That layer is the classifier when it is an ``nn.Linear``, or a 1×1 convolution
whose output is globally pooled before it reaches the output (SqueezeNet). Anything else — a
dense prediction head that upsamples, say — is not a classifier, and the error names the
candidate layers a user can pass as ``layer: dotted.name``.

This finds ``fc`` (ResNet, RegNet, GoogLeNet, Inception), ``classifier.N`` (VGG, MobileNet,
EfficientNet, DenseNet, ConvNeXt, SqueezeNet), ``heads.head`` (ViT), ``head`` (Swin) without a
table of model names. Models that ``torch.fx`` cannot trace fall back to the conventional
attribute names (``fc``, ``classifier``, ``head``, ``heads``) and take the last ``nn.Linear``
under them.

Auxiliary heads (GoogLeNet's ``aux1.fc2``/``aux2.fc2``, Inception v3's ``AuxLogits.fc``) are the
classifiers of the *extra* outputs a model returns in training mode.

Example:
    >>> import torchvision
    >>> find_classifier(torchvision.models.resnet18())[0]
    'fc'
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from optkit.errors import PipelineError
from optkit.models.layers import buffers_restored, in_width, module_mode, out_width

__all__ = ["ClassifierNotFoundError", "HEAD_TYPES", "find_classifier", "auxiliary_classifiers", "candidate_heads_hint"]

log = logging.getLogger(__name__)

#: Layer types a classifier head can be.
HEAD_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Modules between a head and the output that keep one value per class.
_PASS_THROUGH_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Flatten,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softmax,
    nn.LogSoftmax,
)
#: Modules that reduce space to one value per class (what turns a 1×1 convolution into a classifier).
_POOL_MODULES = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)

_PASS_THROUGH_FUNCTIONS = {
    torch.flatten,
    torch.squeeze,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.softmax,
    torch.log_softmax,
    F.dropout,
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    F.sigmoid,
    F.softmax,
    F.log_softmax,
}
_POOL_FUNCTIONS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d, torch.mean, torch.amax}
_PASS_THROUGH_METHODS = {"flatten", "view", "reshape", "squeeze", "contiguous", "relu", "sigmoid", "softmax", "log_softmax"}
_POOL_METHODS = {"mean", "amax"}
#: Sums of logits (of heads averaged together) and scalings by a constant.
_SUM_FUNCTIONS = {operator.add, torch.add}
_SCALE_FUNCTIONS = {operator.truediv, operator.mul, torch.div, torch.mul}

#: Conventional names, used only when the model cannot be traced.
_CONVENTIONAL_NAMES = ("fc", "classifier", "head", "heads", "last_linear")


class ClassifierNotFoundError(PipelineError):
    """The model has no recognisable classifier head (or ``layer`` does not name one)."""


class _HeadTracer(torch.fx.Tracer):
    """A tracer that keeps every head-type layer whole, whatever package defines it."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, HEAD_TYPES) or super().is_leaf_module(m, module_qualified_name)


def find_classifier(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """The dotted name and module of ``model``'s final classifier layer.

    Args:
        model: a classification model (not changed; nothing is run).
        layer: the dotted name of the head, to skip detection (it is still checked).

    Returns:
        ``(name, module)``: an ``nn.Linear``, or a 1×1 convolution (SqueezeNet). Of heads averaged
        into the output (LeViT's ``head`` and ``head_dist``), the first; :func:`auxiliary_classifiers`
        lists the others.

    Raises:
        ClassifierNotFoundError: ``layer`` names no head layer, or none was found; the message
            names candidate layers.
    """
    if layer is not None:
        return layer, _checked_head(model, layer)
    graph = _trace(model, training=False)
    if graph is None:
        return _conventional_head(model)
    found = _heads_of(graph.output_nodes[0], model) if graph.output_nodes else None
    if not found:
        raise ClassifierNotFoundError(
            f"found no classifier in {type(model).__name__}: its output does not come from a Linear layer "
            f"(or a 1x1 convolution that is globally pooled) through shape-only ops; {candidate_heads_hint(model)}"
        )
    return found[0], model.get_submodule(found[0])


def auxiliary_classifiers(model: nn.Module, training_outputs: bool = True) -> list[tuple[str, nn.Module]]:
    """The other heads: those averaged with the classifier into the output, and those of extra outputs.

    LeViT and distilled DeiT average two heads (``head`` and ``head_dist``) into their logits: a class
    is a row of each, so both are always listed. GoogLeNet and Inception v3 return the logits of
    auxiliary heads as extra outputs in training mode.

    Args:
        model: a classification model (its train/eval flags are restored afterwards).
        training_outputs: also list the classifiers of the extra training-mode outputs.

    Returns:
        ``[(name, module), ...]``: the averaged heads (after the first, which :func:`find_classifier`
        returns), then the auxiliary heads in the model's layer order; empty when there are none (or
        the model cannot be traced).
    """
    graph = _trace(model, training=False)
    if graph is None or not graph.output_nodes:
        return []
    averaged = _heads_of(graph.output_nodes[0], model) or []
    main, names = averaged[:1], averaged[1:]
    auxiliary: list[str] = []
    training_graph = _trace(model, training=True) if training_outputs else None
    for node in training_graph.output_nodes[1:] if training_graph is not None else []:
        name = _head_of(node, model)
        if name is not None and name not in main + names + auxiliary:
            auxiliary.append(name)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return [(name, model.get_submodule(name)) for name in names + sorted(auxiliary, key=order.__getitem__)]


class _Graph:
    """The traced graph's output tensors, primary output first."""

    def __init__(self, output_nodes: list[torch.fx.Node]):
        self.output_nodes = output_nodes


def _trace(model: nn.Module, training: bool) -> _Graph | None:
    """Trace ``model`` symbolically (its flags and buffers restored); ``None`` when ``torch.fx`` cannot."""
    with module_mode(model, training), buffers_restored(model):
        try:
            graph = _HeadTracer().trace(model)
        # torch.fx fails in many ways on untraceable code (TraceError, TypeError, RuntimeError,
        # AttributeError, NotImplementedError ...); any of them means "use the fallback".
        except Exception as exc:  # noqa: BLE001
            log.debug("torch.fx cannot trace %s (%s: %s); using conventional names", type(model).__name__, type(exc).__name__, exc)
            return None
    outputs = [n for n in graph.nodes if n.op == "output"]
    return _Graph(_tensor_nodes(outputs[0].args[0])) if outputs else _Graph([])


def _tensor_nodes(value: Any) -> list[torch.fx.Node]:
    """The nodes of an output structure (node, tuple, list, namedtuple or dict), in order."""
    if isinstance(value, torch.fx.Node):
        # torch.fx records a namedtuple output (GoogLeNetOutputs) as a call to its class.
        if value.op == "call_function" and isinstance(value.target, type) and issubclass(value.target, tuple):
            return _tensor_nodes(value.args) + _tensor_nodes(dict(value.kwargs))
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _tensor_nodes(v)]
    if isinstance(value, (tuple, list)):
        return [n for v in value for n in _tensor_nodes(v)]
    return []


def _head_of(node: torch.fx.Node, model: nn.Module) -> str | None:
    """The first of :func:`_heads_of`, or ``None``."""
    heads = _heads_of(node, model)
    return heads[0] if heads else None


def _heads_of(node: torch.fx.Node, model: nn.Module) -> list[str] | None:
    """Walk back from ``node`` through class-preserving ops; the heads' names, or ``None``.

    Several heads come back when the output adds (or averages) their logits, as LeViT's and DeiT's
    ``head`` and ``head_dist`` do: one class is one row of each, so they are replaced together.
    """
    pooled = False
    while True:
        if node.op == "call_module":
            name = str(node.target)  # a call_module's target is the module's qualified name
            module = model.get_submodule(name)
            if isinstance(module, nn.Linear):
                return [name]
            if isinstance(module, HEAD_TYPES):
                return [name] if pooled and all(k == 1 for k in module.get_parameter("weight").shape[2:]) else None
            if isinstance(module, _POOL_MODULES):
                pooled = True
            elif not isinstance(module, _PASS_THROUGH_MODULES):
                return None
        elif node.op == "call_function":
            if node.target in _SUM_FUNCTIONS and len(node.args) == 2 and all(isinstance(a, torch.fx.Node) for a in node.args):
                return _summed_heads([_heads_of(a, model) for a in node.args if isinstance(a, torch.fx.Node)], model)
            if node.target in _SCALE_FUNCTIONS and isinstance(node.args[0], torch.fx.Node) and isinstance(node.args[1], (int, float)):
                pass  # (a + b) / 2: scaling by a constant keeps one value per class
            elif node.target in _POOL_FUNCTIONS:
                pooled = True
            elif node.target not in _PASS_THROUGH_FUNCTIONS and node.target is not operator.getitem:
                return None
        elif node.op == "call_method":
            if node.target in _POOL_METHODS:
                pooled = True
            elif node.target not in _PASS_THROUGH_METHODS:
                return None
        else:
            return None
        previous = next((a for a in node.args if isinstance(a, torch.fx.Node)), None)
        if previous is None:
            return None
        node = previous


def _summed_heads(branches: list[list[str] | None], model: nn.Module) -> list[str] | None:
    """The heads of a sum of branches, when every branch ends in heads of one width (else ``None``)."""
    if any(b is None for b in branches):
        return None
    names = [name for branch in branches if branch is not None for name in branch]
    # Parallel heads read features of one width and give one value per class each.
    widths = {(in_width(model.get_submodule(name)), out_width(model.get_submodule(name))) for name in names}
    return list(dict.fromkeys(names)) if len(widths) == 1 else None


def _conventional_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The last ``nn.Linear`` under a conventional head name (for untraceable models)."""
    for attr in _CONVENTIONAL_NAMES:
        holder = getattr(model, attr, None)
        if isinstance(holder, nn.Module):
            linears = [(name, m) for name, m in holder.named_modules() if isinstance(m, nn.Linear)]
            if linears:
                name, module = linears[-1]
                return (f"{attr}.{name}" if name else attr), module
    raise ClassifierNotFoundError(
        f"found no classifier in {type(model).__name__}: torch.fx cannot trace it and it has no Linear layer under "
        f"{', '.join(_CONVENTIONAL_NAMES)}; {candidate_heads_hint(model)}"
    )


def _checked_head(model: nn.Module, layer: str) -> nn.Module:
    module = _submodule(model, layer)
    if not isinstance(module, HEAD_TYPES):
        raise ClassifierNotFoundError(
            f"layer {layer!r} is a {type(module).__name__}, not a Linear or convolution layer; {candidate_heads_hint(model)}"
        )
    return module


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ClassifierNotFoundError(f"{type(model).__name__} has no layer {name!r}; {candidate_heads_hint(model)}") from None


def candidate_heads_hint(model: nn.Module, limit: int = 5) -> str:
    """'candidate layers (the last N): a (Linear 512->10), ...; name one with `layer: dotted.name`'."""
    heads = [(name, m) for name, m in model.named_modules() if isinstance(m, HEAD_TYPES)][-limit:]
    if not heads:
        return "it has no Linear or convolution layers at all"
    listed = ", ".join(f"{name} ({type(m).__name__} {_width(m)})" for name, m in heads)
    return f"candidate layers (the last {len(heads)}): {listed}; name one with `layer: dotted.name`"


def _width(module: nn.Module) -> str:
    widths = f"{in_width(module)}->{out_width(module)}"
    if isinstance(module, nn.modules.conv._ConvNd):
        return f"{widths}, {'x'.join(map(str, module.kernel_size))}"
    return widths
