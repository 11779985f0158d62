"""Finding layer→BatchNorm pairs in torch.fx graphs, scope by scope.

The whole model is traced first. Where a module does not trace (data-dependent control flow,
unusual arguments, a wrapper), each of its children is traced on its own, recursively, so the
traceable parts of an untraceable model still get a graph. A graph proves its pairs for every
input: the BatchNorm node takes exactly the layer node as input, and that node has no other
user. Modules a graph never reaches (an auxiliary head used only in training) get their own scope.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import fx, nn

from optkit_plugins.fuse_bn.folding import FOLDABLE_LAYERS, NORM_LAYERS

__all__ = ["GraphEvidence", "GraphPair", "IsLayer", "IsNorm", "find_graph_pairs", "is_batchnorm", "is_foldable_layer", "to_graph_module"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphPair:
    """A layer whose only user, in ``scope``'s graph, is ``bn``; names are model-qualified."""

    layer: str
    bn: str
    scope: str


@dataclass
class GraphEvidence:
    """What the traced graphs show.

    Attributes:
        pairs: layer→BatchNorm pairs, each proven by the graph of its scope.
        bn_inputs: for each BatchNorm a graph reached, what feeds it, for pairs not made.
        calls: how many call sites each layer and BatchNorm has across all graphs.
        untraceable: modules that did not trace, with the error, keyed by qualified name
            (``""`` is the model itself).
        whole_model_traced: the model traced as one graph.
    """

    pairs: list[GraphPair] = field(default_factory=list)
    bn_inputs: dict[str, str] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    untraceable: dict[str, str] = field(default_factory=dict)
    whole_model_traced: bool = False


#: Whether a module normalizes like a BatchNorm (a BatchNorm, or a module a rule describes as one).
IsNorm = Callable[[nn.Module], bool]
#: Whether a BatchNorm may fold into a module (a Conv/ConvTranspose/Linear, or a module whose rule has ``fold_bn``).
IsLayer = Callable[[nn.Module], bool]


def is_batchnorm(module: nn.Module) -> bool:
    """A BatchNorm flavour or FrozenBatchNorm2d (no module rules consulted)."""
    return isinstance(module, NORM_LAYERS)


def is_foldable_layer(module: nn.Module) -> bool:
    """A Conv, ConvTranspose or Linear layer, subclasses included (no module rules consulted)."""
    return isinstance(module, FOLDABLE_LAYERS)


class _LayerLeafTracer(fx.Tracer):
    """Keeps every layer and BatchNorm a ``call_module`` node, subclasses and FrozenBatchNorm2d included."""

    def __init__(self, is_norm: IsNorm = is_batchnorm, is_layer: IsLayer = is_foldable_layer) -> None:
        super().__init__()
        self.is_norm, self.is_layer = is_norm, is_layer

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return self.is_layer(m) or self.is_norm(m) or super().is_leaf_module(m, module_qualified_name)


def _qualify(scope: str, name: str) -> str:
    return f"{scope}.{name}" if scope else name


def _describe_producer(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target}"
    if node.op in ("call_function", "call_method"):
        return f"{getattr(node.target, '__name__', node.target)}()"
    return f"{node.op} {node.target}"


def _trace(module: nn.Module, is_norm: IsNorm = is_batchnorm, is_layer: IsLayer = is_foldable_layer) -> fx.Graph:
    return _LayerLeafTracer(is_norm, is_layer).trace(module)


def _read_graph(graph: fx.Graph, scope: str, root: nn.Module, evidence: GraphEvidence, is_norm: IsNorm, is_layer: IsLayer) -> set[str]:
    """Record the pairs and calls in ``graph``; returns the qualified names of the modules it calls."""
    reached: set[str] = set()
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        name = _qualify(scope, node.target)
        reached.add(name)
        module = root.get_submodule(node.target)
        norm = is_norm(module)
        if not (norm or is_layer(module)):
            continue
        evidence.calls[name] += 1
        if not norm:
            continue
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not isinstance(source, fx.Node):
            evidence.bn_inputs[name] = "called with other arguments than one tensor"
            continue
        producer = root.get_submodule(str(source.target)) if source.op == "call_module" else None
        if producer is None or not is_layer(producer):
            evidence.bn_inputs[name] = (
                f"its input comes from {_describe_producer(source)}, not a Conv/Linear (nor a module whose rule has fold_bn)"
            )
            continue
        if len(source.users) != 1:
            others = ", ".join(sorted(_describe_producer(u) for u in source.users if u is not node))
            evidence.bn_inputs[name] = f"the output of {_qualify(scope, str(source.target))} is also used by {others}"
            continue
        evidence.pairs.append(GraphPair(_qualify(scope, str(source.target)), name, scope))
    return reached


def _modules_under(root: nn.Module, scope: str) -> list[tuple[str, nn.Module]]:
    return [(_qualify(scope, n), m) for n, m in root.named_modules() if n]


def _analyse(module: nn.Module, scope: str, evidence: GraphEvidence, is_norm: IsNorm, is_layer: IsLayer) -> None:
    try:
        graph = _trace(module, is_norm, is_layer)
    # Tracing runs arbitrary forward code, which can fail in any way (TraceError on
    # data-dependent control flow, TypeError on unusual arguments, ...): every failure
    # means the same thing here, that this scope has no graph and its children are tried.
    except Exception as exc:  # noqa: BLE001
        evidence.untraceable[scope] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.debug("scope %r does not trace: %s", scope, exc)
        for name, child in module.named_children():
            _analyse(child, _qualify(scope, name), evidence, is_norm, is_layer)
        return
    if scope == "":
        evidence.whole_model_traced = True
    reached = _read_graph(graph, scope, module, evidence, is_norm, is_layer)
    _analyse_unreached(module, scope, reached, evidence, is_norm, is_layer)


def _analyse_unreached(
    module: nn.Module, scope: str, reached: set[str], evidence: GraphEvidence, is_norm: IsNorm, is_layer: IsLayer
) -> None:
    """Give the subtrees of ``module`` that its graph never entered graphs of their own.

    An auxiliary head used only in training, or a branch another input would take, holds
    pairs too; a subtree the graph entered only in part is searched child by child.
    """
    for name, child in module.named_children():
        qualified = _qualify(scope, name)
        if qualified in reached or is_layer(child) or is_norm(child):
            continue
        below = _modules_under(child, qualified)
        if not any(is_norm(m) and n not in reached for n, m in below):
            continue
        if any(n in reached for n, _ in below):
            _analyse_unreached(child, qualified, reached, evidence, is_norm, is_layer)
        else:
            _analyse(child, qualified, evidence, is_norm, is_layer)


def find_graph_pairs(model: nn.Module, is_norm: IsNorm = is_batchnorm, is_layer: IsLayer = is_foldable_layer) -> GraphEvidence:
    """Trace ``model`` (scope by scope where it must) and collect the pairs the graphs prove.

    Args:
        model: the model in eval mode (tracing follows the eval branch of ``if self.training``).
        is_norm: which modules count as BatchNorms (module rules may describe more).
        is_layer: which modules a BatchNorm may fold into (module rules may describe more).

    Returns:
        The :class:`GraphEvidence`.
    """
    evidence = GraphEvidence()
    _analyse(model, "", evidence, is_norm, is_layer)
    return evidence


def to_graph_module(model: nn.Module) -> fx.GraphModule:
    """``model`` as one flat fx GraphModule without ``nn.Identity`` calls (what torch.fx's fuser returns).

    Flattening saves the Python call of every container module: a few microseconds each,
    which shows on small models on the CPU. Containers become plain modules, so code that
    indexes them (``model.features[3]``) no longer works on the result.

    Raises:
        Exception: whatever tracing ``model`` raises; call it only on a model that traced.
    """
    graph = _trace(model)
    for node in list(graph.nodes):
        if node.op == "call_module" and type(model.get_submodule(node.target)) is nn.Identity and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    graph.lint()
    return fx.GraphModule(model, graph, class_name=type(model).__name__)
