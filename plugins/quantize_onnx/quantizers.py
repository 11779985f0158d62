"""onnxruntime's quantization tools, called the way quantize_onnx's options say: pre-processing
(``quant_pre_process``), static int8 (``quantize_static``), dynamic int8 (``quantize_dynamic``)
and float16 (``onnxruntime.transformers.float16``).

Every function imports onnxruntime when called, so importing the plugin stays cheap.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

    from optkit_plugins.quantize_onnx.calibration import CalibrationFeed
    from optkit_plugins.quantize_onnx.graph import Exclusion

__all__ = ["Int8Settings", "preprocess", "quantize_static_int8", "quantize_dynamic_int8", "convert_fp16"]

log = logging.getLogger(__name__)

#: Calibration batches onnxruntime runs before it merges what it collected: the histogram
#: calibrators (entropy, percentile) keep every activation of the batches they run (ResNet-50's
#: come to ~100 MB a sample at 224x224), so one at a time.
_STRIDE = 1


@dataclass(frozen=True)
class Int8Settings:
    """The int8 choices quantize_onnx passes on (see its options).

    Attributes:
        format: ``qoperator`` (QLinearConv, QGemm, ...) or ``qdq`` (QuantizeLinear/DequantizeLinear pairs).
        per_channel: one scale per output channel of each weight.
        reduce_range: 7-bit weights (for CPUs without VNNI, where 8-bit products may saturate).
        activation_type: ``uint8`` or ``int8``.
        weight_type: ``int8`` or ``uint8``.
    """

    format: str = "qoperator"
    per_channel: bool = True
    reduce_range: bool = False
    activation_type: str = "uint8"
    weight_type: str = "int8"


def preprocess(source: Path, target: Path) -> str:
    """onnxruntime's recommended pre-processing (symbolic and ONNX shape inference, graph
    optimization) of ``source`` into ``target``; returns what was done, for the report.

    Where symbolic shape inference fails (data-dependent shapes: a detector's NonZero and
    NonMaxSuppression, BERT's attention mask), it is skipped and the rest runs: ONNX shape inference
    and the optimizer still fold what the exporter left (Identity nodes forwarding a shared
    initializer, which the quantizer cannot read as a Conv bias). Returns ``"failed, ..."`` (``target``
    unwritten) when that fails too: the graph is then quantized as exported.
    """
    first = _pre_process(source, target)
    if first is None:
        return "quant_pre_process"
    second = _pre_process(source, target, skip_symbolic_shape=True)
    if second is None:
        return f"quant_pre_process without symbolic shape inference (it failed: {first})"
    return f"failed, quantized as exported: {first}; without symbolic shape inference: {second}"


def _pre_process(source: Path, target: Path, **options: bool) -> str | None:
    """One call of ``quant_pre_process``; why it failed, or ``None``."""
    from onnxruntime.quantization import quant_pre_process

    try:
        # Where symbolic shape inference stops short (BERT's graphs), onnxruntime saves
        # sym_shape_infer_temp.onnx and its data into the working directory: it is made the
        # target's folder (a temporary one) for the call.
        with contextlib.chdir(target.parent):
            quant_pre_process(str(source.resolve()), str(target.resolve()), **options)
    # Shape inference and the optimizer run on arbitrary graphs and fail in many ways; the
    # caller says why.
    except Exception as exc:
        log.debug("quant_pre_process failed", exc_info=True)
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return None


def _op_types(registry_ops: list[str], exclusion: Exclusion) -> list[str]:
    return sorted(set(registry_ops) - set(exclusion.op_types))


def quantize_static_int8(
    source: Path,
    target: Path,
    feed: CalibrationFeed,
    settings: Int8Settings,
    exclusion: Exclusion,
    method: str,
    percentile: float,
    cache: Path | None = None,
) -> None:
    """Static int8: activation ranges from calibration batches, fixed in the graph.

    Args:
        source: the float ONNX file.
        target: where the quantized file goes.
        feed: the calibration batches.
        settings: format, types, per-channel, reduced range.
        exclusion: op types and nodes left in float.
        method: ``minmax``, ``entropy`` or ``percentile``.
        percentile: the percentile of each activation's distribution kept (``percentile`` only).
        cache: a file for the activation ranges: written by the first call, read by the next ones (the
            same source, feed and method; onnxruntime 1.24 and later, else each call calibrates).
    """
    import inspect

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    registry = QDQRegistry if settings.format == "qdq" else QLinearOpsRegistry
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    extra: dict[str, Any] = {"CalibStridedMinMax": _STRIDE}
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    cached = (
        {"calibration_cache_path": str(cache)}
        if cache and "calibration_cache_path" in inspect.signature(quantize_static).parameters
        else {}
    )
    quantize_static(
        str(source),
        str(target),
        feed,
        quant_format=QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=_op_types(list(registry), exclusion),
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        activation_type=types[settings.activation_type],
        weight_type=types[settings.weight_type],
        nodes_to_exclude=list(exclusion.nodes),
        calibrate_method=methods[method],
        extra_options=extra,
        **cached,
    )


def quantize_dynamic_int8(
    source: Path, target: Path, settings: Int8Settings, exclusion: Exclusion, only: tuple[str, ...] | None = None
) -> None:
    """Dynamic int8: int8 weights; activations quantized at run time (uint8), from each call's own range.

    ``only``: the op types to quantize (of those onnxruntime quantizes dynamically); default all of them.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    quantize_dynamic(
        str(source),
        str(target),
        op_types_to_quantize=_op_types([op for op in IntegerOpsRegistry if only is None or op in only], exclusion),
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        weight_type=QuantType.QInt8 if settings.weight_type == "int8" else QuantType.QUInt8,
        nodes_to_exclude=list(exclusion.nodes),
    )


def convert_fp16(model: onnx.ModelProto, exclusion: Exclusion) -> onnx.ModelProto:
    """The model in float16, its input and outputs kept float32 (casts at the edges); the op types
    onnxruntime keeps in float32 by default (``DEFAULT_OP_BLOCK_LIST``) and ``exclusion`` stay float32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    return convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=sorted({*DEFAULT_OP_BLOCK_LIST, *exclusion.op_types}),
        node_block_list=list(exclusion.nodes),
    )
