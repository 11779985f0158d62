"""Turning a module into an in-memory ONNX model: the torch.export-based exporter first, the
TorchScript exporter as the fallback, graph inputs and outputs named.

Outputs are flattened the way both exporters flatten them (``torch.utils._pytree``: tuples in
order, dicts in insertion order), so the recorded structure puts ONNX outputs back into the
model's own tuple or dict.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import onnx
import torch
import torch.utils._pytree as pytree
from torch import nn

from optkit.files import atomic_write_bytes
from optkit.errors import StageError

__all__ = [
    "ExportedOnnx",
    "OutputLayout",
    "output_layout",
    "export_onnx_model",
    "symbolic_batch_dim",
    "graph_opset",
    "save_onnx_model",
]

log = logging.getLogger(__name__)

#: Name of the symbolic batch dimension in the graph.
BATCH_DIM = "batch"
_PROTOBUF_LIMIT = 2**31 - 1

Exporter = Literal["auto", "dynamo", "torchscript"]


@dataclass(frozen=True)
class OutputLayout:
    """How a model's output flattens into ONNX graph outputs.

    Attributes:
        names: one name per tensor, in graph order (``output`` for a single tensor; dict keys;
            ``output_0``, ``output_1`` for a tuple; ``out.0`` for nesting).
        structure: the pytree spec that rebuilds the model's tuple or dict from the flat list.
    """

    names: list[str]
    structure: Any


@dataclass(frozen=True)
class ExportedOnnx:
    """An exported model and how it was made.

    Attributes:
        model: the ONNX model.
        exporter: ``dynamo`` (torch.export-based) or ``torchscript``.
        opset: the default-domain opset of the graph.
        seconds: time spent exporting (including a failed first attempt).
        fallback_reason: why the torch.export-based exporter was not used, when it was not.
    """

    model: onnx.ModelProto
    exporter: str
    opset: int
    seconds: float
    fallback_reason: str | None = None


def _key_name(key: Any) -> str:
    for attribute in ("key", "idx", "name"):  # MappingKey, SequenceKey, GetAttrKey (namedtuple)
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def output_layout(outputs: Any, names: list[str] | None = None) -> OutputLayout:
    """Name the tensors of a model output in the exporters' flattening order.

    Args:
        outputs: what the model returned on the example input.
        names: names chosen by the user, one per tensor; derived from the structure when ``None``.

    Returns:
        The names and the structure to rebuild the output from the flat list.

    Raises:
        StageError: the output holds something other than tensors, or ``names`` has the wrong length.

    Example:
        >>> output_layout({"out": torch.zeros(1), "aux": torch.zeros(1)}).names
        ['out', 'aux']
    """
    leaves, structure = pytree.tree_flatten_with_path(outputs)
    not_tensors = [pytree.keystr(path) or "output" for path, leaf in leaves if not isinstance(leaf, torch.Tensor)]
    if not_tensors or not leaves:
        raise StageError(
            f"export_onnx: the model's output must be tensors (in tuples, lists or dicts); "
            f"found other values at {not_tensors or 'the top level'}"
        )
    if names is not None:
        if len(names) != len(leaves):
            raise StageError(
                f"export_onnx: option output_names has {len(names)} name(s) but the model returns "
                f"{len(leaves)} tensor(s) (in this order: {[pytree.keystr(p) or 'output' for p, _ in leaves]})"
            )
        return OutputLayout(list(names), structure)
    derived = []
    for path, _ in leaves:
        parts = [_key_name(key) for key in path]
        if not parts:
            derived.append("output")
        elif isinstance(path[0], pytree.SequenceKey):
            derived.append("output_" + ".".join(parts))
        else:
            derived.append(".".join(parts))
    return OutputLayout(derived, structure)


def graph_opset(model: onnx.ModelProto) -> int:
    """The opset version of the default (``ai.onnx``) domain."""
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def symbolic_batch_dim(model: onnx.ModelProto) -> str | None:
    """The name of the first graph input's leading dimension when it is symbolic, else ``None``."""
    shape = model.graph.input[0].type.tensor_type.shape
    if not shape.dim:
        return None
    return shape.dim[0].dim_param or None


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _export_dynamo(
    model: nn.Module, example: torch.Tensor, opset: int | None, dynamic_batch: bool, input_name: str, output_names: list[str]
) -> onnx.ModelProto:
    if dynamic_batch and example.shape[0] == 1:
        # torch.export specializes dimensions of size 0 and 1: traced at batch 1, the graph input is
        # symbolic but inner reshapes (nn.MultiheadAttention's, for one) keep batch 1 and fail on any
        # other batch. Traced at batch 2, the batch stays symbolic all through.
        example = example.repeat(2, *([1] * (example.dim() - 1)))
    # torch.export prints progress to stdout, which a pipeline run keeps for the CLI; a failed
    # opset conversion is logged with a traceback by onnxscript, and is reported by the caller
    # as the reason for the fallback instead.
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
        _quiet_logger("onnxscript.version_converter"),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            verbose=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=output_names,
            dynamic_shapes=({0: BATCH_DIM},) if dynamic_batch else None,
            external_data=False,
        )
    return program.model_proto


def _export_torchscript(
    model: nn.Module, example: torch.Tensor, opset: int | None, dynamic_batch: bool, input_name: str, output_names: list[str]
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    dynamic_axes = {name: {0: BATCH_DIM} for name in [input_name, *output_names]} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice of the legacy exporter
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )
    return onnx.load_from_string(buffer.getvalue())


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _unfulfilled(model: onnx.ModelProto, opset: int | None, dynamic_batch: bool) -> str | None:
    """Why an exported model does not honour the options, or ``None``."""
    if opset is not None and graph_opset(model) != opset:
        return f"the exporter produced opset {graph_opset(model)}, not the requested {opset}"
    if dynamic_batch and symbolic_batch_dim(model) is None:
        return "the exporter fixed the batch dimension (the model specializes on it)"
    return None


def export_onnx_model(
    model: nn.Module,
    example: torch.Tensor,
    layout: OutputLayout,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    input_name: str = "input",
    exporter: Exporter = "auto",
) -> ExportedOnnx:
    """Export ``model`` (already an eval copy) to an in-memory ONNX model.

    ``auto`` tries the torch.export-based exporter (``dynamo=True``) and falls back to the
    TorchScript exporter when it fails, or when its graph does not honour ``opset`` or
    ``dynamic_batch``.

    Args:
        model: the module to export, in eval mode.
        example: an input batch on the model's device.
        layout: the output names (see :func:`output_layout`).
        opset: default-domain opset; ``None`` lets the exporter choose.
        dynamic_batch: make the leading input (and output) dimension symbolic.
        input_name: name of the graph input.
        exporter: ``auto``, ``dynamo`` or ``torchscript``.

    Returns:
        The model, the exporter that made it, its opset, and why the fallback was taken.

    Raises:
        StageError: no exporter could export the model as asked (each reason given).
    """
    start = time.perf_counter()
    fallback_reason = None
    if exporter in ("auto", "dynamo"):
        try:
            proto = _export_dynamo(model, example, opset, dynamic_batch, input_name, layout.names)
        except (torch.onnx.errors.OnnxExporterError, ImportError) as error:  # ImportError: no onnxscript
            log.debug("torch.export-based ONNX export failed", exc_info=True)
            fallback_reason = _first_line(error)
        else:
            fallback_reason = _unfulfilled(proto, opset, dynamic_batch)
            if fallback_reason is None:
                return ExportedOnnx(proto, "dynamo", graph_opset(proto), time.perf_counter() - start)
        if exporter == "dynamo":
            raise StageError(f"export_onnx: the torch.export-based exporter (exporter: dynamo) failed: {fallback_reason}")
        log.info("torch.export-based ONNX export not used (%s); falling back to the TorchScript exporter", fallback_reason)
    try:
        proto = _export_torchscript(model, example, opset, dynamic_batch, input_name, layout.names)
    # The tracer raises RuntimeError; unsupported operators raise OnnxExporterError (a RuntimeError);
    # arguments the traced code cannot take raise TypeError or ValueError.
    except (RuntimeError, TypeError, ValueError) as error:
        earlier = f"; the torch.export-based exporter failed first: {fallback_reason}" if fallback_reason else ""
        raise StageError(f"export_onnx: the TorchScript exporter failed: {_first_line(error)}{earlier}") from error
    problem = _unfulfilled(proto, opset, dynamic_batch)
    if problem is not None:
        raise StageError(f"export_onnx: {problem}")
    return ExportedOnnx(proto, "torchscript", graph_opset(proto), time.perf_counter() - start, fallback_reason)


def save_onnx_model(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Write ``model`` to ``path`` as one self-contained file, atomically.

    A model over protobuf's 2 GB limit cannot be one file: its weights go to ``<name>.data``
    beside it (that write is not atomic).

    Returns:
        The external-data files written (empty for a self-contained file).
    """
    if model.ByteSize() < _PROTOBUF_LIMIT:
        atomic_write_bytes(path, model.SerializeToString())
        return []
    data = path.with_name(path.name + ".data")
    log.info("%s is over 2 GB: weights go to %s", path.name, data.name)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    return [data]
