"""What a quantization pass needs to know of an ONNX graph: its input, whether it is quantized
already, which nodes an ``exclude`` list names, and what the quantized graph computes in."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optkit import StageError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "GraphInput",
    "graph_inputs",
    "refuse_quantized",
    "Exclusion",
    "resolve_exclude",
    "op_census",
    "COMPUTE_OPS",
    "detection_postprocess",
    "own_biases",
]

#: Op types that carry a model's multiply-accumulates: what "left in float" is counted over.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "LSTM", "GRU", "RNN", "Einsum"})

#: Op types only a quantized (or half-precision) graph holds.
_QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeMatMul",
        "QAttention",
    }
)


@dataclass(frozen=True)
class GraphInput:
    """An input of an exported graph.

    Attributes:
        name: its name in the graph.
        fixed_batch: the batch size when the graph was exported for one (``dynamic_batch: false``), else ``None``.
        dtype: the numpy type it takes.
    """

    name: str
    fixed_batch: int | None
    dtype: Any = None


def graph_inputs(model: onnx.ModelProto) -> list[GraphInput]:
    """The graph's inputs (initializers listed as inputs by old exporters are skipped).

    Raises:
        StageError: the graph has no input.
    """
    import onnx

    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise StageError("quantize_onnx: the graph has no input")
    found = []
    for graph_input in inputs:
        tensor_type = graph_input.type.tensor_type
        dims = tensor_type.shape.dim
        fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
        found.append(GraphInput(graph_input.name, fixed or None, onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)))
    return found


def refuse_quantized(model: onnx.ModelProto) -> None:
    """Refuse a graph that is quantized or in half precision already: quantizing twice compounds the error.

    Raises:
        StageError: naming the quantized ops found.
    """
    import onnx

    found = sorted({node.op_type for node in model.graph.node if node.op_type in _QUANTIZED_OPS})
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        found.append("float16 weights")
    if found:
        raise StageError(
            f"quantize_onnx: the ONNX model is quantized already ({', '.join(found)}); quantize the float export "
            "once: put quantize_onnx right after export_onnx, and only one of them"
        )


@dataclass(frozen=True)
class Exclusion:
    """What ``exclude`` leaves in float.

    Attributes:
        op_types: op types named.
        nodes: node names named.
        matched: each ``exclude`` entry and the nodes it matched (for the report).
    """

    op_types: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    matched: dict[str, list[str]] | None = None


def resolve_exclude(model: onnx.ModelProto, exclude: list[str], original: onnx.ModelProto | None = None) -> Exclusion:
    """Sort ``exclude`` into node names and op types of ``model``'s graph.

    Args:
        model: the graph that is quantized.
        exclude: node names or op types (``Gemm``, ``node_linear``).
        original: the graph before pre-processing, to explain a name that pre-processing removed.

    Raises:
        StageError: an entry is neither a node name nor an op type of the graph; the message lists
            the op types present and, for a name pre-processing fused away, the way around it.
    """
    names = {node.name for node in model.graph.node if node.name}
    op_types = {node.op_type for node in model.graph.node}
    nodes, types, matched = [], [], {}
    for entry in exclude:
        if entry in names:
            nodes.append(entry)
            matched[entry] = [entry]
        elif entry in op_types:
            types.append(entry)
            matched[entry] = [node.name for node in model.graph.node if node.op_type == entry]
        elif original is not None and entry in {node.name for node in original.graph.node}:
            raise StageError(
                f"quantize_onnx: exclude: node {entry!r} is not in the graph after pre-processing (quant_pre_process "
                "fused or renamed it); exclude it by op type, or set preprocess: false"
            )
        else:
            raise StageError(
                f"quantize_onnx: exclude: {entry!r} is neither a node name nor an op type of the graph "
                f"(op types: {', '.join(sorted(op_types))})"
            )
    return Exclusion(tuple(types), tuple(nodes), matched)


def op_census(model: onnx.ModelProto) -> dict[str, Any]:
    """What the graph computes in.

    Returns:
        ``ops`` (node count by op type) and ``float_compute``: the names of compute nodes
        (:data:`COMPUTE_OPS`) left in float, that is, whose weight (second input) is not
        dequantized from int8 (in QOperator form quantized nodes have other op types, such as
        ``QLinearConv``; in QDQ form they read a ``DequantizeLinear`` output).
    """
    counts = Counter(node.op_type for node in model.graph.node)
    produced_by = {output: node.op_type for node in model.graph.node for output in node.output}
    float_compute = [
        node.name
        for node in model.graph.node
        if node.op_type in COMPUTE_OPS and (len(node.input) < 2 or produced_by.get(node.input[1]) != "DequantizeLinear")
    ]
    return {"ops": dict(sorted(counts.items())), "float_compute": float_compute}


#: Inputs of these op types that hold box coordinates or indices, not features: the walk from the
#: compute ops back through the network does not follow them (RoiAlign's ``rois``, ``batch_indices``).
_NOT_FEATURES = {"RoiAlign": (1, 2)}


def _subgraph_nodes(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The nodes of ``node``'s subgraphs (If branches, Loop bodies), nested ones included."""
    import onnx

    found = []
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                found.append(inner)
                found.extend(_subgraph_nodes(inner))
    return found


def detection_postprocess(model: onnx.ModelProto) -> list[str]:
    """The nodes of a detector's postprocess (anchors, box decoding, score thresholds, top-k, NMS), to keep in float.

    A graph with ``NonMaxSuppression`` (torchvision's detectors, exported with their postprocess) computes
    box coordinates and scores after its network: int8 there would put pixel coordinates on a 256-step
    grid and tie the scores NMS sorts. The network is what the compute ops (:data:`COMPUTE_OPS`) read,
    directly or through other nodes, following float tensors only and not RoiAlign's boxes (the R-CNN
    box head reads features pooled from proposals: the pooling is the network's, the proposals are
    not). Every other node, those of If/Loop subgraphs included, is the postprocess.

    Returns:
        the names of the postprocess's nodes; empty for a graph without ``NonMaxSuppression``.
    """
    import onnx

    nodes = list(model.graph.node)
    inner = [found for node in nodes for found in _subgraph_nodes(node)]
    if not any(node.op_type == "NonMaxSuppression" for node in (*nodes, *inner)):
        return []
    try:
        typed = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference refuses some graphs; every tensor then counts as float
        typed = model
    types = {info.name: info.type.tensor_type.elem_type for info in (*typed.graph.value_info, *typed.graph.input)}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    producer = {output: node for node in nodes for output in node.output}
    network: set[int] = set()
    pending = [node for node in nodes if node.op_type in COMPUTE_OPS]
    while pending:
        node = pending.pop()
        if id(node) in network:
            continue
        network.add(id(node))
        skipped = _NOT_FEATURES.get(node.op_type, ())
        for index, name in enumerate(node.input):
            source = producer.get(name)
            if source is None or index in skipped or id(source) in network:
                continue
            if types.get(name, onnx.TensorProto.FLOAT) in floats:
                pending.append(source)
    return [node.name for node in (*nodes, *inner) if id(node) not in network and node.name]


def own_biases(model: onnx.ModelProto) -> list[str]:
    """Give every Conv and Gemm of the main graph a bias initializer of its own, in place.

    onnxruntime's static quantizer stores a bias as int32 at the scale ``input scale x weight scale`` of
    the first node that reads it, and later readers reuse it: where the exporter shares one bias (an RPN
    or RetinaNet head applied to every FPN level; equal zero biases, deduplicated) the other nodes get a
    bias at another node's scale, or an initializer quantized for another operator (BERT's LayerNorm bias
    read by its pooler's Gemm). A bias read through an ``Identity`` of an initializer (TorchScript's way to
    share) is copied too, since the quantizer reads only initializers.

    Returns:
        the names of the nodes given a copy.
    """
    import onnx

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    identity_of = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity" and node.input[0] in initializers}
    readers: Counter[str] = Counter(name for node in graph.node for name in node.input)
    copied: list[str] = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
            continue
        bias = node.input[2]
        source = identity_of.get(bias, bias)
        if source not in initializers or (source == bias and readers[bias] == 1):
            continue
        own = onnx.TensorProto()
        own.CopyFrom(initializers[source])
        own.name = f"{source}/{node.name or len(copied)}"
        graph.initializer.append(own)
        node.input[2] = own.name
        copied.append(node.name)
    return copied
