"""What a quantization pass needs to know of an ONNX graph: its input, whether it is quantized
already, which nodes an ``exclude`` list names, and what the quantized graph computes in."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optkit import StageError

if TYPE_CHECKING:
    import onnx

__all__ = ["GraphInput", "graph_inputs", "refuse_quantized", "Exclusion", "resolve_exclude", "op_census", "COMPUTE_OPS"]

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
