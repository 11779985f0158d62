"""Turning a module into an in-memory ONNX model that is valid at the requested opset.

Routes are tried in order until one gives a model at exactly the requested opset, with a symbolic
batch when asked for, that passes ``onnx.checker`` and loads in onnxruntime:

* ``dynamo``: the torch.export-based exporter (``dynamo=True``). At opset 18 and above it translates
  directly; below 18 it converts down, and :func:`~optkit_plugins.export_onnx.opsets.fix_split_num_outputs`
  repairs the one attribute its optimizer leaves behind (opsets 16 and 17; torch's converter keeps
  opset 18 below 16, which fails the opset check);
* ``torchscript``: the legacy exporter, what Ultralytics itself uses.

When none does, the export is refused before anything is written, with every route's reason.
Outputs are named as :func:`optkit.output_leaves` names them (the exporters' flattening
order), so the recorded structure puts ONNX outputs back into the model's own tuple or dict.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx
import torch
import torch.utils._pytree as pytree
from torch import nn

from optkit import ExampleInputs, StageError, atomic_write_bytes, output_leaves
from optkit_plugins.export_onnx.opsets import (
    NATIVE_DYNAMO_OPSET,
    checker_problem,
    fix_split_num_outputs,
    graph_opset,
    runtime_problem,
)
from optkit_plugins.export_onnx.trace_state import release_inference_tensors, traceable_state

__all__ = [
    "ExportedOnnx",
    "OutputLayout",
    "output_layout",
    "export_onnx_model",
    "symbolic_batch_dim",
    "save_onnx_model",
    "ROUTES",
]

log = logging.getLogger(__name__)

#: Name of the symbolic batch dimension in the graph.
BATCH_DIM = "batch"
#: The name of the symbolic sequence dimension of integer inputs (token ids, attention masks).
SEQUENCE_DIM = "sequence"
_PROTOBUF_LIMIT = 2**31 - 1

Exporter = Literal["auto", "dynamo", "torchscript"]
#: The routes each ``exporter`` option tries, in order.
ROUTES: dict[str, tuple[str, ...]] = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}


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
        model: the ONNX model (valid: checker and onnxruntime accepted it).
        exporter: the route that made it: ``dynamo`` (torch.export-based) or ``torchscript``.
        opset: the default-domain opset of the graph.
        seconds: time spent exporting (every attempt).
        attempts: every route tried: ``route``, ``ok``, ``reason`` (when not ok), ``splits_fixed``.
        splits_fixed: ``Split`` nodes rewritten from ``num_outputs`` to explicit sizes.
        fallback_reason: why the routes before the one used were not, when any failed.
    """

    model: onnx.ModelProto
    exporter: str
    opset: int
    seconds: float
    attempts: list[dict[str, Any]] = field(default_factory=list)
    splits_fixed: int = 0
    fallback_reason: str | None = None


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
    return OutputLayout([leaf.name for leaf in output_leaves(outputs)], structure)


def symbolic_batch_dim(model: onnx.ModelProto) -> str | None:
    """The name of the first graph input's leading dimension when it is symbolic, else ``None``."""
    shape = model.graph.input[0].type.tensor_type.shape
    if not shape.dim:
        return None
    return shape.dim[0].dim_param or None


@contextlib.contextmanager
def _printed_to_stderr() -> Iterator[None]:
    """Keep what the block prints to ``sys.stderr`` off the console; afterwards (also when it raises) the
    whole text goes to the debug log and one line, as a :class:`UserWarning`, to the stage's
    ``details.library_warnings`` (the runner records warnings there instead of printing them).

    torch.export prints the partial FX graph of a failed export to ``sys.stderr`` (hundreds of lines for
    a detector whose postprocess has data-dependent shapes), before export_onnx falls back to TorchScript.
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            yield
    finally:
        text = printed.getvalue().strip()
        if text:
            log.debug("torch.onnx.export (dynamo) printed to stderr:\n%s", text)
            first = next(line.strip() for line in text.splitlines() if line.strip())
            warnings.warn(
                f"torch.onnx.export (dynamo) printed {len(text.splitlines())} lines to stderr, kept in the debug log "
                f"(torch.export's partial graph of a failed export, when it fails); the first: {first[:120]}",
                stacklevel=1,
            )


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


class _PositionalCall(nn.Module):
    """``model`` called with all its inputs positionally (the exporters name graph inputs in that order);
    the trailing ``keywords`` are passed by name."""

    def __init__(self, model: nn.Module, positional: int, keywords: list[str]):
        super().__init__()
        self.model, self.positional, self.keywords = model, positional, keywords

    def forward(self, *tensors: torch.Tensor) -> Any:
        args, rest = tensors[: self.positional], tensors[self.positional :]
        return self.model(*args, **dict(zip(self.keywords, rest, strict=False)))


def _positional(model: nn.Module, example: ExampleInputs) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The module and the tuple of tensors to export: keyword inputs become trailing positional ones."""
    if not example.kwargs:
        return model, example.args
    return _PositionalCall(model, len(example.args), list(example.kwargs)), tuple(example.tensors)


def dynamic_dims(example: ExampleInputs, dynamic_batch: bool) -> list[dict[int, str]]:
    """Per input, its symbolic dimensions: the batch (dimension 0) when ``dynamic_batch``, and the
    sequence (dimension 1) of integer inputs of two or more dimensions (token ids, masks), which all share it."""
    dims = []
    for tensor, definition in zip(example.tensors, example.defs, strict=False):
        axes = {0: BATCH_DIM} if dynamic_batch and tensor.dim() else {}
        if dynamic_batch and definition.has_sequence:
            axes[1] = SEQUENCE_DIM
        dims.append(axes)
    return dims


def _dynamic_shapes(module: nn.Module, example: ExampleInputs) -> tuple[Any, ...]:
    """torch.export's ``dynamic_shapes``: one entry per argument of ``forward``, where a ``*args``
    (the wrapper's ``*tensors``, a model's ``forward(*args, **kwargs)``) is one entry for all it takes."""
    dims = tuple(dynamic_dims(example, True))
    named = 0
    for parameter in inspect.signature(module.forward).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return (*dims[:named], dims[named:])
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            named += 1
    return dims


def _export_dynamo(
    model: nn.Module, example: ExampleInputs, opset: int | None, dynamic_batch: bool, input_names: list[str], output_names: list[str]
) -> onnx.ModelProto:
    if dynamic_batch and example.batch_size == 1:
        # torch.export specializes dimensions of size 0 and 1: traced at batch 1, the graph input is
        # symbolic but inner reshapes (nn.MultiheadAttention's, for one) keep batch 1 and fail on any
        # other batch. Traced at batch 2, the batch stays symbolic all through.
        example = example.with_batch(2)
    module, tensors = _positional(model, example)
    # torch.export prints progress to stdout, which a pipeline run keeps for the CLI; a failed
    # opset conversion is logged with a traceback by onnxscript, and is reported by the caller
    # as the reason for the fallback instead.
    with (
        _printed_to_stderr(),
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
        _quiet_logger("onnxscript.version_converter"),
        _quiet_logger("torch.onnx"),  # "Setting ONNX exporter to use operator set version 18 ...": the attempt records it
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            tensors,
            dynamo=True,
            verbose=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=_dynamic_shapes(module, example) if dynamic_batch else None,
            external_data=False,
        )
    if program is None:  # torch returns None only when it wrote to a file, which this call does not ask for
        raise StageError("torch.onnx.export (dynamo) returned no program")
    return program.model_proto


def _export_torchscript(
    model: nn.Module, example: ExampleInputs, opset: int | None, dynamic_batch: bool, input_names: list[str], output_names: list[str]
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: axes for name, axes in zip(input_names, dynamic_dims(example, True), strict=False)}
        dynamic_axes.update({name: {0: BATCH_DIM} for name in output_names})
    module, tensors = _positional(model, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice of the legacy exporter
        torch.onnx.export(
            module,
            tensors,
            buffer,  # type: ignore[arg-type]  # a file-like object is documented; the stub names paths only
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )
    return onnx.load_from_string(buffer.getvalue())


def _reason(error: BaseException) -> str:
    """One line saying why an exporter failed: torch.export's own summary line rather than its banner."""
    lines = [line.strip() for line in str(error).strip().splitlines()]
    summary = next((i for i, line in enumerate(lines) if line.startswith("## Exception summary")), None)
    if summary is not None:
        line = next((line for line in lines[summary + 1 :] if line), "")
    else:
        line = lines[0] if lines else ""
    return f"{type(error).__name__}: {line}"[:300]


def _unfulfilled(model: onnx.ModelProto, opset: int | None, dynamic_batch: bool) -> str | None:
    """Why an exported model does not honour the options, or ``None``."""
    if opset is not None and graph_opset(model) != opset:
        return f"the exporter produced opset {graph_opset(model)}, not the requested {opset}"
    if dynamic_batch and symbolic_batch_dim(model) is None:
        return "the exporter fixed the batch dimension (the model specializes on it)"
    return None


def _export(
    route: str, model: nn.Module, example: ExampleInputs, opset: int | None, dynamic_batch: bool, input_names: list[str], names: list[str]
) -> onnx.ModelProto:
    """One export by ``route``; exporter failures propagate."""
    export = _export_dynamo if route == "dynamo" else _export_torchscript
    with traceable_state(model):
        return export(model, example, opset, dynamic_batch, input_names, names)


def _attempt(
    route: str, model: nn.Module, example: ExampleInputs, opset: int | None, dynamic_batch: bool, input_names: list[str], names: list[str]
) -> tuple[onnx.ModelProto | None, dict[str, Any]]:
    """Export by ``route`` and check the result; returns the model (``None`` on failure) and the attempt's record."""
    try:
        proto = _export(route, model, example, opset, dynamic_batch, input_names, names)
    # The torch.export-based exporter wraps its failures in OnnxExporterError (ImportError: no
    # onnxscript). The TorchScript tracer raises RuntimeError (unsupported operators raise
    # OnnxExporterError, a RuntimeError); arguments the traced code cannot take raise TypeError or ValueError.
    except (torch.onnx.errors.OnnxExporterError, ImportError, RuntimeError, TypeError, ValueError) as error:
        log.debug("%s ONNX export failed", route, exc_info=True)
        return None, {"route": route, "ok": False, "reason": _reason(error)}
    record: dict[str, Any] = {"route": route}
    problem = _unfulfilled(proto, opset, dynamic_batch)
    if problem is None and route == "dynamo":
        try:
            record["splits_fixed"] = fix_split_num_outputs(proto)
        except ValueError as error:
            problem = str(error)
    problem = problem or checker_problem(proto) or runtime_problem(proto)
    record.update(ok=problem is None, **({"reason": problem} if problem else {}))
    return (proto if problem is None else None), record


def export_onnx_model(
    model: nn.Module,
    example: torch.Tensor | ExampleInputs,
    layout: OutputLayout,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    input_name: str = "input",
    exporter: Exporter = "auto",
    input_names: list[str] | None = None,
) -> ExportedOnnx:
    """Export ``model`` (already an eval copy) to a valid in-memory ONNX model.

    The routes of ``exporter`` (:data:`ROUTES`) are tried in order; the first whose model is at
    exactly ``opset``, keeps a symbolic batch when ``dynamic_batch``, passes ``onnx.checker`` and
    loads in onnxruntime is used (see the module docstring).

    Args:
        model: the module to export, in eval mode.
        example: an input batch on the model's device, or the model's several inputs.
        layout: the output names (see :func:`output_layout`).
        opset: default-domain opset; ``None`` lets the exporter choose.
        dynamic_batch: make the leading input (and output) dimension symbolic, and the sequence
            dimension of integer inputs (see :func:`dynamic_dims`).
        input_name: name of the graph input of a one-input model.
        input_names: names of the graph inputs, one per input (default: ``example``'s names, or
            ``[input_name]`` for one positional input).
        exporter: ``auto``, ``dynamo`` or ``torchscript``.

    Returns:
        The model, the route that made it, its opset, and every attempt.

    Raises:
        StageError: no route produced a valid model; the message gives each route's reason.
    """
    start = time.perf_counter()
    release_inference_tensors(model)
    example = ExampleInputs.of(example)
    if input_names is None:
        input_names = [input_name] if example.single else example.names
    attempts = []
    for route in ROUTES[exporter]:
        proto, record = _attempt(route, model, example, opset, dynamic_batch, input_names, layout.names)
        attempts.append(record)
        if proto is not None:
            failed = "; ".join(f"{a['route']}: {a['reason']}" for a in attempts[:-1])
            if failed:
                log.info("ONNX export by %s (%s)", route, failed)
            return ExportedOnnx(
                proto, route, graph_opset(proto), time.perf_counter() - start, attempts, record.get("splits_fixed", 0), failed or None
            )
    reasons = "; ".join(f"{a['route']}: {a['reason']}" for a in attempts)
    wanted = f"opset-{opset}" if opset is not None else "an"
    hint = f"; opset {NATIVE_DYNAMO_OPSET} or above is exported natively" if opset is not None and opset < NATIVE_DYNAMO_OPSET else ""
    raise StageError(f"export_onnx: no exporter produced {wanted} ONNX model that is valid and loads in onnxruntime ({reasons}){hint}")


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
