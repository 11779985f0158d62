"""Whether an exported model is valid at the opset it claims, and the one repair it needs below 18.

With torch 2.14 / onnxscript 0.7, ``torch.onnx.export(dynamo=True, opset_version=17)`` translates at
opset 18 (the lowest torchlib has), converts the model down, and *then* optimizes it. The
optimizer's constant folding turns ``SplitToSequence`` + ``SequenceAt`` (how ``torch.chunk`` is
lowered) into ``Split(..., num_outputs=n)`` whatever the model's opset, and ``num_outputs`` exists
from Split-18 on: the opset-16/17 file fails ``onnx.checker`` ("Unrecognized attribute: num_outputs
for operator Split"). :func:`fix_split_num_outputs` writes those splits out with explicit sizes,
which every opset has. A model is then accepted only when ``onnx.checker`` (with shape inference)
passes and onnxruntime loads it (a checker-valid opset-9 ``Upsample`` is refused by onnxruntime).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["graph_opset", "fix_split_num_outputs", "checker_problem", "runtime_problem", "NATIVE_DYNAMO_OPSET"]

#: The lowest opset the torch.export-based exporter translates to directly (torchlib's).
NATIVE_DYNAMO_OPSET = 18
#: Models over protobuf's 2 GB limit cannot be checked in memory; the saved file is checked instead.
_IN_MEMORY_LIMIT = 2**31 - 1


def graph_opset(model: onnx.ModelProto) -> int:
    """The opset version of the default (``ai.onnx``) domain."""
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


def checker_problem(model: onnx.ModelProto) -> str | None:
    """What ``onnx.checker`` (full check, with shape inference) says is wrong with ``model``, or ``None``."""
    if model.ByteSize() >= _IN_MEMORY_LIMIT:
        return None
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        return f"onnx.checker: {_first_line(error)}"
    return None


def runtime_problem(model: onnx.ModelProto) -> str | None:
    """Why onnxruntime (CPU) cannot load ``model``, or ``None``."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, NotImplemented

    if model.ByteSize() >= _IN_MEMORY_LIMIT:
        return None
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except (Fail, InvalidArgument, InvalidGraph, NotImplemented) as error:
        return f"onnxruntime: {_first_line(error)}"
    return None


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """The shape of every value shape inference can see (``None`` for a symbolic dimension)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    graph = inferred.graph
    shapes: dict[str, list[int | None]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    for initializer in graph.initializer:
        shapes[initializer.name] = list(initializer.dims)
    return shapes


def fix_split_num_outputs(model: onnx.ModelProto) -> int:
    """Rewrite ``Split(num_outputs=n)`` in a model below opset 18 into explicit sizes, in place.

    Split-18 with ``num_outputs=n`` cuts the axis into chunks of ``ceil(d / n)``, the last one
    smaller; the sizes are written as the ``split`` input (opsets 13-17) or attribute (below 13).

    Returns:
        How many nodes were rewritten (0 at opset 18 and above).

    Raises:
        ValueError: a split axis whose size is not static, so its sizes cannot be written out.
    """
    opset = graph_opset(model)
    nodes = [
        node
        for node in model.graph.node
        if node.op_type == "Split" and node.domain in ("", "ai.onnx") and any(a.name == "num_outputs" for a in node.attribute)
    ]
    if opset >= NATIVE_DYNAMO_OPSET or not nodes:
        return 0
    shapes = _static_shapes(model)
    taken = {i.name for i in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    for count, node in enumerate(nodes):
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        parts, axis = int(attributes["num_outputs"]), int(attributes.get("axis", 0))
        size = (shapes.get(node.input[0]) or [None] * (axis + 1))[axis]
        if size is None:
            raise ValueError(
                f"Split {node.name!r}: axis {axis} of {node.input[0]!r} has no static size, so num_outputs cannot be written as sizes"
            )
        chunk = (size + parts - 1) // parts
        sizes = [chunk] * (parts - 1) + [size - chunk * (parts - 1)]
        kept = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(kept)
        if opset >= 13:
            name = f"{node.name or 'split'}_sizes_{count}"
            while name in taken:
                name += "_"
            taken.add(name)
            model.graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), name))
            del node.input[1:]
            node.input.append(name)
        else:
            node.attribute.append(helper.make_attribute("split", sizes))
    return len(nodes)
