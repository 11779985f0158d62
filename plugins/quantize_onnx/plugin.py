"""The ``quantize_onnx`` pass: the ONNX model of the stage before, in int8 (static or dynamic) or
float16, measured by the runner under onnxruntime and held to a similarity tolerance."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationInfo, field_validator, model_validator
from torch import nn

from optkit import OnnxArtifact, Pass, PassContext, StageError, Tolerance, cpu_info, file_bytes, hookimpl
from optkit_plugins.quantize_onnx.calibration import CalibrationFeed, data_batches, random_batches
from optkit_plugins.quantize_onnx.gate import seeded_similarity
from optkit_plugins.quantize_onnx.graph import Exclusion, GraphInput, graph_inputs, op_census, refuse_quantized, resolve_exclude
from optkit_plugins.quantize_onnx.quantizers import Int8Settings, convert_fp16, preprocess, quantize_dynamic_int8, quantize_static_int8
from optkit_plugins.quantize_onnx.scheme import choose_reduce_range

__all__ = ["QuantizeOnnx", "optkit_register_passes"]

#: What report.json says of the MACs of a quantized stage.
MACS_NOTE = (
    "MACs are those of the float model: the count is of the arithmetic (multiply-accumulates), "
    "not of its precision; int8 or float16 changes what each costs, not how many there are"
)

#: Options that mean nothing in a mode, and why.
_NOT_IN_MODE = {
    "dynamic": {
        "format": "dynamic quantization writes integer operators (ConvInteger, MatMulInteger), QOperator-style",
        "activation_type": "dynamic quantization computes activation ranges at run time, in uint8",
        "calibration": "dynamic quantization needs no calibration",
    },
    "fp16": {
        name: "float16 conversion is not int8 quantization"
        for name in ("format", "per_channel", "reduce_range", "activation_type", "weight_type", "calibration", "preprocess")
    },
}


class CalibrationOptions(BaseModel):
    """How static quantization finds each activation's range."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="minmax: the observed range; entropy: the range that keeps the distribution (KL); percentile: clip the tails."
    )
    batches: PositiveInt = Field(16, description="Batches of data.calibration to calibrate on (fewer when it has fewer).")
    percentile: float = Field(99.999, gt=0, le=100, description="method percentile: the share of each activation's values kept.")
    random: bool = Field(
        False, description="Calibrate on random standard-normal batches instead of data (the report says so); only for latency studies."
    )

    @model_validator(mode="after")
    def _percentile_needs_its_method(self) -> CalibrationOptions:
        if "percentile" in self.model_fields_set and self.method != "percentile":
            raise ValueError(f"percentile applies to method: percentile, not {self.method}")
        return self


class QuantizeOnnx(Pass):
    """Quantize the ONNX model the stage before produced (``export_onnx``).

    The stage's result is a new :class:`~optkit.artifacts.OnnxArtifact`, measured by the runner
    under onnxruntime (size, latency, drift, accuracy on data.eval); the module goes on unchanged.
    """

    name = "quantize_onnx"
    summary = "Quantize the exported ONNX model: int8 (static, calibrated on data; or dynamic) or float16 for CUDA."
    # Held to a similarity (cosine, top-1 agreement) against the float ONNX model, not element-wise:
    # on data.eval when the pipeline has it, else on the seeded batch.
    preserves_outputs = True
    consumes = OnnxArtifact
    produces = OnnxArtifact

    class Options(Pass.Options):
        """Options of ``quantize_onnx``."""

        mode: Literal["static", "dynamic", "fp16"] = Field(
            "static",
            description="static: int8 weights and activations, activation ranges calibrated on data; dynamic: int8 weights, "
            "activation ranges at run time (Linear/attention-heavy models); fp16: float16 for CUDA.",
        )
        format: Literal["qoperator", "qdq"] = Field(
            "qoperator",
            description="qoperator: quantized operators (QLinearConv); qdq: QuantizeLinear/DequantizeLinear pairs (TensorRT and other runtimes).",
        )
        per_channel: bool = Field(True, description="One weight scale per output channel.")
        reduce_range: bool | Literal["auto"] = Field(
            "auto",
            description="7-bit weights. auto: on an x86 CPU without VNNI (where onnxruntime's uint8 x int8 products of 8-bit "
            "weights saturate and lose accuracy) when activations are uint8, else 8-bit; true/false pins it (pin it when the "
            "model will run on another CPU than the one that quantizes it).",
        )
        activation_type: Literal["uint8", "int8"] = Field("uint8", description="Activation type (static).")
        weight_type: Literal["int8", "uint8"] = Field("int8", description="Weight type.")
        calibration: CalibrationOptions = Field(default_factory=CalibrationOptions, description="Static only.")
        exclude: list[str] = Field(default_factory=list, description="Node names or op types (Gemm, MatMul) left in float.")
        preprocess: bool = Field(True, description="onnxruntime's quant_pre_process (shape inference, graph optimization) first.")
        min_cosine: float | None = Field(
            0.99, ge=-1, le=1, description="Smallest cosine similarity of the outputs to the float model's (null: unbounded)."
        )
        min_top1_agreement: float | None = Field(
            0.95, ge=0, le=1, description="Smallest share of samples whose top-1 equals the float model's (null: unbounded)."
        )

        @field_validator("format", "per_channel", "reduce_range", "activation_type", "weight_type", "calibration", "preprocess")
        @classmethod
        def _applies_to_mode(cls, value: Any, info: ValidationInfo) -> Any:
            # Runs for options given only (defaults are not validated); mode is declared first.
            mode = info.data.get("mode")
            why = _NOT_IN_MODE.get(str(mode), {}).get(info.field_name or "")
            if why is not None:
                raise ValueError(f"does not apply to mode {mode}: {why}")
            return value

        @field_validator("weight_type")
        @classmethod
        def _supported_types(cls, value: str, info: ValidationInfo) -> str:
            if info.data.get("activation_type") == "int8" and value == "uint8":
                raise ValueError("onnxruntime does not support uint8 weights with int8 activations; use int8")
            return value

        @field_validator("min_top1_agreement")
        @classmethod
        def _a_bound(cls, value: float | None, info: ValidationInfo) -> float | None:
            if value is None and info.data.get("min_cosine", 0.0) is None:
                raise ValueError("min_cosine is null too: a quantized model is held to at least one of them")
            return value

    options: Options

    def tolerance(self) -> Tolerance:
        """``min_cosine`` and ``min_top1_agreement`` against the float ONNX model (no element-wise bound)."""
        return Tolerance.similarity(cosine=self.options.min_cosine, top1_agreement=self.options.min_top1_agreement)

    def device_problem(self, device_type: str) -> str | None:
        """mode fp16 is for CUDA."""
        if self.options.mode == "fp16" and device_type != "cuda":
            return (
                f"quantize_onnx: mode fp16 is for CUDA, and the pipeline's device is {device_type}; "
                "set device: cuda, or use mode: static or dynamic for int8 on the CPU"
            )
        return None

    def apply(self, model: nn.Module, ctx: PassContext) -> OnnxArtifact:
        """Quantize ``ctx.artifact`` (the float ONNX file) and return the quantized artifact.

        Raises:
            StageError: no ONNX model before this stage, fp16 off CUDA, a graph quantized already,
                static mode without calibration data (and without ``calibration: {random: true}``),
                an ``exclude`` entry the graph does not have, or a file onnx.checker refuses.
        """
        import onnx

        options = self.options
        source = ctx.require_artifact(OnnxArtifact)
        if options.mode == "fp16" and ctx.device.type != "cuda":
            raise StageError(
                f"quantize_onnx: mode fp16 is for CUDA, and this run is on {ctx.device} (onnxruntime's CPU provider "
                "runs few float16 kernels and casts around the rest, so it is slower than float32 there); "
                "set device: cuda, or use mode: static or dynamic for int8 on the CPU"
            )
        float_model = onnx.load(str(source.path))
        refuse_quantized(float_model)
        details = ctx.details
        details.update({"mode": options.mode, "input": os.path.relpath(source.path, ctx.output_dir)})
        name = "model_fp16.onnx" if options.mode == "fp16" else "model_int8.onnx"
        target = ctx.output_dir / name  # listed as the stage's artifact once written
        # Pre-processed graphs and onnxruntime's calibration models go beside the stage, on the
        # run folder's disk (whose room was checked), and are removed afterwards.
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".quantize_onnx-", dir=ctx.output_dir) as work:
            if options.mode == "fp16":
                exclusion = resolve_exclude(float_model, options.exclude)
                onnx.save(convert_fp16(float_model, exclusion), str(target))
            else:
                prepared = self._prepare(source.path, Path(work), details)
                exclusion = resolve_exclude(onnx.load(str(prepared), load_external_data=False), options.exclude, float_model)
                self._quantize_int8(prepared, target, exclusion, ctx, graph_inputs(float_model))
        ctx.artifact_path(name)
        details["exclude"] = exclusion.matched or {}
        try:
            onnx.checker.check_model(str(target), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
            raise StageError(f"quantize_onnx: {target.name} fails onnx.checker: {error}") from error
        details["graph"] = op_census(onnx.load(str(target), load_external_data=False))
        float_bytes, quantized_bytes = file_bytes(source.path), file_bytes(target)  # external data included
        details["size"] = {"float_bytes": float_bytes, "bytes": quantized_bytes, "ratio": round(float_bytes / quantized_bytes, 3)}
        details["macs"] = MACS_NOTE
        on_data = ctx.data is not None and ctx.data.eval is not None
        if not on_data:
            # The runner holds the similarity bounds to these figures (report.json's similarity_gate).
            fixed_batch = graph_inputs(float_model)[0].fixed_batch
            details["similarity_gate"] = seeded_similarity(source, target, ctx.example_inputs, ctx.device, fixed_batch)
        where = "data.eval" if on_data else details["similarity_gate"]["on"]
        details["tolerance"] = self.tolerance().describe() + f" against the float ONNX model (on {where})"
        return dataclasses.replace(source, path=target, source_model=model)

    def _int8_scheme(self, details: dict[str, Any]) -> Int8Settings:
        """The int8 settings, ``reduce_range`` chosen for this CPU; recorded in ``details``."""
        options = self.options
        cpu = cpu_info()
        uint8_activations = options.mode == "dynamic" or options.activation_type == "uint8"
        choice = choose_reduce_range(options.reduce_range, cpu, uint8_activations=uint8_activations)
        details.update(
            {
                "format": options.format,
                "per_channel": options.per_channel,
                "reduce_range": choice.reduce_range,
                "weight_type": options.weight_type,
                "int8_scheme": choice.as_dict(cpu),
            }
        )
        if options.mode == "static":
            details["activation_type"] = options.activation_type
        return Int8Settings(options.format, options.per_channel, choice.reduce_range, options.activation_type, options.weight_type)

    def _prepare(self, source: Path, work: Path, details: dict[str, Any]) -> Path:
        """The graph to quantize: pre-processed when asked and possible, else the float file itself."""
        if not self.options.preprocess:
            details["preprocess"] = "off"
            return source
        prepared = work / "preprocessed.onnx"
        failure = preprocess(source, prepared)
        details["preprocess"] = "quant_pre_process" if failure is None else f"failed, quantized as exported: {failure}"
        return source if failure is not None else prepared

    def _quantize_int8(self, prepared: Path, target: Path, exclusion: Exclusion, ctx: PassContext, graph: list[GraphInput]) -> None:
        options = self.options
        settings = self._int8_scheme(ctx.details)
        if options.mode == "dynamic":
            quantize_dynamic_int8(prepared, target, settings, exclusion)
            return
        calibration = options.calibration
        if calibration.random:
            batches = random_batches(ctx.example_inputs, calibration.batches)
            where = "random"
            ctx.logger.warning(
                "quantize_onnx: calibrating on random inputs (calibration: {random: true}): the ranges fit random data, not real inputs"
            )
        else:
            try:
                batches = data_batches(ctx.require_data("calibration"), calibration.batches)
            except StageError as exc:
                raise StageError(f"{exc}; or, for a latency study only, calibration: {{random: true}}") from None
            where = "data.calibration"
        fixed_batch = graph[0].fixed_batch
        feed = CalibrationFeed(batches, graph, fixed_batch)
        if not len(feed):
            batch = f" of the graph's fixed batch size {fixed_batch}" if fixed_batch else ""
            raise StageError(f"quantize_onnx: {where} gave no batches{batch} to calibrate on")
        nonfinite = feed.nonfinite_samples()
        if nonfinite:  # else onnxruntime fails with "AssertionError: scale issue", naming nothing
            raise StageError(
                f"quantize_onnx: {where} holds {nonfinite} samples with NaN or infinite values (of {feed.samples} read); "
                "quantization scales cannot be computed from them: fix the data or its transform"
            )
        # The histogram calibrators print progress to stdout; it goes to the debug log instead.
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            quantize_static_int8(prepared, target, feed, settings, exclusion, calibration.method, calibration.percentile)
        if printed.getvalue():
            ctx.logger.debug("%s", printed.getvalue().rstrip())
        record: dict[str, Any] = {"method": calibration.method, "source": where, "batches": len(feed), "samples": feed.samples}
        if calibration.method == "percentile":
            record["percentile"] = calibration.percentile
        if calibration.random:
            record["warning"] = (
                "calibrated on random inputs (calibration: {random: true}; standard-normal floats, integers in their range), "
                "not on data: the activation "
                "ranges fit random inputs, and accuracy on real inputs may suffer; give data.calibration for a real model"
            )
        ctx.details["calibration"] = record


@hookimpl
def optkit_register_passes(register: Callable[[type[Pass]], None]) -> None:
    """Register :class:`QuantizeOnnx`."""
    register(QuantizeOnnx)
