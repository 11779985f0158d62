"""Which compute nodes lose the most accuracy to int8: each node's own share of the error.

A quantized graph and its float source are run on the same samples with the output of every
compute node (and of what feeds it) exposed as a graph output. A node's error is measured as the
signal-to-quantization-noise ratio (SQNR, dB) of its output against the float model's, and its own
share as the dB it loses: the SQNR of its activation input minus that of its output. A node whose
input arrives clean and leaves noisy is where the precision goes; error passed on from upstream
is not charged to it. The same comparison onnxruntime's ``qdq_loss_debug`` offers, reduced to one
ranking; it needs a quantized graph that keeps the float graph's tensor names at node outputs
(QDQ format, or dynamic quantization), not a QOperator one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optkit_plugins.quantize_onnx.graph import COMPUTE_OPS

if TYPE_CHECKING:
    import numpy as np
    import onnx

__all__ = ["NodeError", "rank_nodes", "sqnr_db"]

#: The SQNR given to a tensor that is equal in both graphs (a graph input): no noise to measure.
CLEAN_DB = 120.0


@dataclass(frozen=True)
class NodeError:
    """The error a compute node adds.

    Attributes:
        node: its name in the float graph.
        op_type: its op type.
        output_db: SQNR of its output against the float graph's (dB; higher is closer).
        lost_db: the dB lost between its activation input and its output (its own share).
    """

    node: str
    op_type: str
    output_db: float
    lost_db: float

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "output_sqnr_db": round(self.output_db, 2), "lost_db": round(self.lost_db, 2)}


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``other`` against ``reference``, in dB (capped at :data:`CLEAN_DB`)."""
    import numpy as np

    signal = float(np.square(reference.astype(np.float64)).sum())
    noise = float(np.square(reference.astype(np.float64) - other.astype(np.float64)).sum())
    if noise == 0.0 or not math.isfinite(noise):
        return CLEAN_DB if noise == 0.0 else -CLEAN_DB
    return min(CLEAN_DB, 10.0 * math.log10(max(signal, 1e-30) / noise))


def rank_nodes(float_path: Path, quantized_path: Path, feeds: list[dict[str, np.ndarray]], work: Path) -> list[NodeError]:
    """The compute nodes of ``float_path``, the one adding the most error first.

    Args:
        float_path: the float graph (pre-processed as the quantized one was).
        quantized_path: its quantized form, keeping the float graph's names at node outputs.
        feeds: input batches (graph input name → array); a few samples suffice.
        work: a folder for the two graphs with exposed tensors.

    Returns:
        One :class:`NodeError` per compute node whose output both graphs expose, by ``lost_db``,
        largest first (empty when none matches, as for a QOperator graph).
    """
    import onnx

    float_model, quantized_model = onnx.load(str(float_path)), onnx.load(str(quantized_path))
    pairs = _matched_tensors(float_model, quantized_model)
    tensors = sorted({name for pair in pairs.values() for name in pair})
    # A quantized tensor is read as the next node reads it: dequantized, where the QDQ graph has that copy
    # (before it, a ReLU folded into the quantization is not applied yet).
    produced = {name for node in quantized_model.graph.node for name in node.output}
    dequantized = {name: f"{name}_DequantizeLinear_Output" for name in tensors if f"{name}_DequantizeLinear_Output" in produced}
    float_values = _collect(float_model, {name: name for name in tensors}, feeds, work / "float_exposed.onnx")
    quantized_values = _collect(
        quantized_model, {name: dequantized.get(name, name) for name in tensors}, feeds, work / "quantized_exposed.onnx"
    )
    db = {name: sqnr_db(float_values[name], quantized_values[name]) for name in float_values if name in quantized_values}
    op_types = {node.name: node.op_type for node in float_model.graph.node}
    found = [
        NodeError(name, op_types[name], db[output], db.get(source, CLEAN_DB) - db[output])
        for name, (source, output) in pairs.items()
        if output in db
    ]
    return sorted(found, key=lambda error: error.lost_db, reverse=True)


#: How onnxruntime names the dequantized copy of a tensor in a QDQ graph.
_DEQUANTIZED = re.compile(r"_DequantizeLinear_Output(_\d+)?$")


def _matched_tensors(float_model: onnx.ModelProto, quantized_model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Compute node name → (its activation input, its output), as tensor names both graphs hold.

    In a QDQ graph a node keeps its name and reads the dequantized copy of its input; its output
    may be the name of an activation folded into it (a Conv's ReLU), which the float graph holds
    too. Dynamic quantization renames the node and keeps its output's name.
    """
    float_tensors = {name for node in float_model.graph.node for name in node.output} | {i.name for i in float_model.graph.input}
    quantized_nodes = {node.name: node for node in quantized_model.graph.node if node.name}
    pairs = {}
    for node in float_model.graph.node:
        if node.op_type not in COMPUTE_OPS or not node.name:
            continue
        twin = quantized_nodes.get(node.name)
        if twin is not None and twin.op_type == node.op_type:
            source, output = _DEQUANTIZED.sub("", twin.input[0]), twin.output[0]
        else:
            source, output = node.input[0], node.output[0]
        if output in float_tensors and source in float_tensors:
            pairs[node.name] = (source, output)
    return pairs


def _collect(model: onnx.ModelProto, tensors: dict[str, str], feeds: list[dict[str, np.ndarray]], path: Path) -> dict[str, np.ndarray]:
    """The values of ``tensors`` (name → the graph's tensor read for it; those the graph has) over ``feeds``, joined along the batch."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    produced = {output for node in model.graph.node for output in node.output} | {i.name for i in model.graph.input}
    present = [name for name in dict.fromkeys(tensors.values()) if name in produced]
    already = {output.name for output in model.graph.output}
    for name in present:
        if name not in already:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    # Fusions would remove the exposed tensors' producers; the graph is run as written.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    runs = [session.run(present, feed) for feed in feeds]
    values = {name: np.concatenate([run[i].reshape(1, -1) for run in runs], axis=1) for i, name in enumerate(present)}
    return {name: values[read] for name, read in tensors.items() if read in values}
