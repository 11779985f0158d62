"""The ``quantize_onnx`` pass: the ONNX model of the stage before, in int8 (static or dynamic) or
float16, measured by the runner under onnxruntime and held to a similarity tolerance."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationInfo, field_validator, model_validator
from torch import nn

from optkit import OnnxArtifact, Pass, PassContext, StageError, Tolerance, cpu_info, file_bytes, hookimpl
from optkit_plugins.quantize_onnx.auto import (
    DYNAMIC_OPS,
    AutoSearch,
    Candidate,
    Similarity,
    graph_family,
    speed_versus_float,
    starting_candidates,
)
from optkit_plugins.quantize_onnx.calibration import CalibrationFeed, data_batches, random_batches
from optkit_plugins.quantize_onnx.gate import gate_batch, seeded_similarity
from optkit_plugins.quantize_onnx.graph import (
    COMPUTE_OPS,
    Exclusion,
    GraphInput,
    detection_postprocess,
    graph_inputs,
    op_census,
    own_biases,
    refuse_quantized,
    resolve_exclude,
)
from optkit_plugins.quantize_onnx.quantizers import Int8Settings, convert_fp16, preprocess, quantize_dynamic_int8, quantize_static_int8
from optkit_plugins.quantize_onnx.scheme import choose_reduce_range
from optkit_plugins.quantize_onnx.sensitivity import rank_nodes

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


#: A calibration method of onnxruntime's static quantization.
CalibrationMethod = Literal["minmax", "entropy", "percentile"]


class AutoOptions(BaseModel):
    """How ``mode: auto`` searches (see :mod:`optkit_plugins.quantize_onnx.auto`)."""

    model_config = ConfigDict(extra="forbid")

    calibrations: list[CalibrationMethod] = Field(
        default_factory=lambda: list[CalibrationMethod](["minmax", "percentile"]),
        min_length=1,
        description="Calibration methods tried for static candidates (entropy is the slowest to calibrate).",
    )
    eval_samples: PositiveInt = Field(
        512, description="Samples of data.eval candidates are compared on (without data.eval: the gate's 32 seeded samples)."
    )
    max_float_share: float = Field(
        0.5, gt=0, le=1, description="The most of the compute nodes (Conv, MatMul, Gemm) the layer-by-layer fallback keeps in float."
    )
    timing_rounds: int = Field(
        20, ge=0, description="Rounds timing each accurate candidate side by side with float (0: choose the first accurate, untimed)."
    )
    keep_float_if_slower: bool = Field(
        True,
        description="When the fastest accurate int8 candidate is slower than float (its speed-up's whole interval below 1), "
        "the stage keeps the float graph and says so; false: keep the int8 graph and warn.",
    )


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

        mode: Literal["static", "dynamic", "auto", "fp16"] = Field(
            "static",
            description="static: int8 weights and activations, activation ranges calibrated on data; dynamic: int8 weights, "
            "activation ranges at run time (Linear/attention-heavy models); auto: static or dynamic, the calibration method "
            "and the nodes left in float chosen by measuring, and the fastest accurate one kept; fp16: float16 for CUDA.",
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
        calibration: CalibrationOptions = Field(default_factory=CalibrationOptions, description="Static and auto.")
        auto: AutoOptions = Field(default_factory=AutoOptions, description="mode auto only: how it searches.")
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

        @field_validator("auto")
        @classmethod
        def _auto_in_auto_mode(cls, value: AutoOptions, info: ValidationInfo) -> AutoOptions:
            if info.data.get("mode") != "auto":
                raise ValueError(f"applies to mode auto, not {info.data.get('mode')}")
            return value

        @model_validator(mode="after")
        def _auto_chooses_the_method(self) -> QuantizeOnnx.Options:
            if self.mode == "auto" and "method" in self.calibration.model_fields_set:
                raise ValueError("calibration.method: mode auto chooses it; list the methods to try in auto.calibrations")
            return self

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
        """Quantize ``ctx.artifact`` (the float ONNX file) and return the quantized artifact (mode auto:
        a copy of the float one when int8 was slower, see ``auto.keep_float_if_slower``).

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
                graph = onnx.load(str(prepared))
                owned = own_biases(graph)
                if owned:
                    details["biases_copied"] = len(owned)  # shared biases: each node quantizes its own (own_biases)
                    prepared = Path(work) / "own_biases.onnx"
                    onnx.save_model(graph, str(prepared), save_as_external_data=True, location=f"{prepared.name}.data")
                exclusion = _keep_postprocess(graph, resolve_exclude(graph, options.exclude, float_model), details)
                if not self._quantize_int8(prepared, graph, target, exclusion, ctx, graph_inputs(float_model), source):
                    details["exclude"] = exclusion.matched or {}
                    return dataclasses.replace(source, path=keep_float_graph(float_model, source.path, ctx), source_model=model)
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
            gate = details["similarity_gate"] = seeded_similarity(source, target, ctx.example_inputs, ctx.device, fixed_batch)
            if gate.get("warning"):
                ctx.logger.warning("quantize_onnx: similarity gate: %s", gate["warning"])
        where = "data.eval" if on_data else details["similarity_gate"]["on"]
        details["tolerance"] = self.tolerance().describe() + f" against the float ONNX model (on {where})"
        if not on_data and "detections" in details["similarity_gate"]:
            details["tolerance"] += (
                "; for detections, top-1 agreement is the share of the float model's detections the quantized one finds "
                "(same label, IoU >= 0.5) and the cosine that of the matched boxes and scores"
            )
        return dataclasses.replace(source, path=target, source_model=model)

    def _int8_scheme(self, details: dict[str, Any], mode: str | None = None) -> Int8Settings:
        """The int8 settings of ``mode`` (default the option's), ``reduce_range`` chosen for this CPU; recorded in ``details``."""
        options = self.options
        mode = mode or options.mode
        cpu = cpu_info()
        uint8_activations = mode == "dynamic" or options.activation_type == "uint8"
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
        if mode == "static":
            details["activation_type"] = options.activation_type
        return Int8Settings(options.format, options.per_channel, choice.reduce_range, options.activation_type, options.weight_type)

    def _prepare(self, source: Path, work: Path, details: dict[str, Any]) -> Path:
        """The graph to quantize: pre-processed when asked and possible, else the float file itself."""
        if not self.options.preprocess:
            details["preprocess"] = "off"
            return source
        prepared = work / "preprocessed.onnx"
        done = preprocess(source, prepared)
        details["preprocess"] = done
        return source if done.startswith("failed") else prepared

    def _quantize_int8(
        self,
        prepared: Path,
        model: Any,
        target: Path,
        exclusion: Exclusion,
        ctx: PassContext,
        graph: list[GraphInput],
        source: OnnxArtifact,
    ) -> bool:
        """Write the int8 graph of ``prepared`` (loaded: ``model``) to ``target``; False when mode auto kept
        the float graph instead (nothing written)."""
        options = self.options
        if options.mode == "auto":
            return self._auto(prepared, model, target, exclusion, ctx, graph, source)
        settings = self._int8_scheme(ctx.details)
        if options.mode == "dynamic":
            quantize_dynamic_int8(prepared, target, settings, exclusion)
            return True
        feed, record = self._calibration_feed(ctx, graph)
        self._quantize_static(prepared, target, feed, settings, exclusion, options.calibration.method, ctx)
        ctx.details["calibration"] = {"method": options.calibration.method, **record}
        return True

    def _calibration_feed(self, ctx: PassContext, graph: list[GraphInput]) -> tuple[CalibrationFeed, dict[str, Any]]:
        """The calibration batches (data.calibration, or random when asked), and what the report says of them."""
        calibration = self.options.calibration
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
        record: dict[str, Any] = {"source": where, "batches": len(feed), "samples": feed.samples}
        if calibration.method == "percentile" or self.options.mode == "auto":
            record["percentile"] = calibration.percentile
        if calibration.random:
            record["warning"] = (
                "calibrated on random inputs (calibration: {random: true}; standard-normal floats, integers in their range), "
                "not on data: the activation "
                "ranges fit random inputs, and accuracy on real inputs may suffer; give data.calibration for a real model"
            )
        return feed, record

    def _quantize_static(
        self,
        prepared: Path,
        target: Path,
        feed: CalibrationFeed,
        settings: Int8Settings,
        exclusion: Exclusion,
        method: str,
        ctx: PassContext,
        cache: Path | None = None,
    ) -> None:
        # The histogram calibrators print progress to stdout; it goes to the debug log instead.
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            quantize_static_int8(prepared, target, feed, settings, exclusion, method, self.options.calibration.percentile, cache)
        if printed.getvalue():
            ctx.logger.debug("%s", printed.getvalue().rstrip())

    def _auto(
        self,
        prepared: Path,
        model: Any,
        target: Path,
        exclusion: Exclusion,
        ctx: PassContext,
        graph: list[GraphInput],
        source: OnnxArtifact,
    ) -> bool:
        """mode auto: the search of :mod:`~optkit_plugins.quantize_onnx.auto` over ``prepared`` (loaded: ``model``);
        the chosen file written to ``target``.

        Returns:
            False when the float graph is kept (int8 was slower), and nothing was written.
        """
        options, details = self.options, ctx.details
        feed, record = self._calibration_feed(ctx, graph)
        schemes: dict[str, dict[str, Any]] = {"static": {}, "dynamic": {}}
        settings = {mode: self._int8_scheme(schemes[mode], mode) for mode in schemes}
        work = target.parent / f".{target.stem}-candidates"
        work.mkdir(exist_ok=True)

        def quantize(candidate: Candidate, path: Path, form: str | None = None) -> Path:
            chosen = Exclusion((*exclusion.op_types, *candidate.float_op_types), (*exclusion.nodes, *candidate.float_nodes))
            if candidate.mode == "dynamic":
                dynamic = settings["dynamic"]
                if candidate.uint8_weights:
                    dynamic = dataclasses.replace(dynamic, weight_type="uint8", reduce_range=False)
                quantize_dynamic_int8(prepared, path, dynamic, chosen, only=DYNAMIC_OPS)
            else:
                static = dataclasses.replace(settings["static"], format=form or settings["static"].format)
                method = candidate.method or "minmax"
                # Every candidate of a method shares its activation ranges: calibrated once.
                self._quantize_static(prepared, path, feed, static, chosen, method, ctx, cache=work / f"ranges_{method}.json")
            return path

        def rank(trial: Any) -> list[tuple[str, dict[str, Any]]]:
            # A QOperator graph renames what it quantizes: the ranking runs on the QDQ form of the same scheme.
            path = trial.path
            if trial.candidate.mode == "static" and settings["static"].format != "qdq":
                path = quantize(trial.candidate, work / "ranking_qdq.onnx", form="qdq")
            few = graph[0].fixed_batch or 2  # a few samples: every compute node's output is kept for them
            feeds = [{name: array[:few] for name, array in feed.arrays[0].items()}]
            return [(error.node, error.as_dict()) for error in rank_nodes(prepared, path, feeds, work)]

        def load(path: Path) -> Any:
            return dataclasses.replace(source, path=path).load(ctx.device)

        if ctx.data is not None and ctx.data.eval is not None:
            batches, taken = [], 0
            for batch in data_batches(ctx.data.eval, options.auto.eval_samples):
                if taken >= options.auto.eval_samples:
                    break
                batches.append(batch)
                taken += batch.batch_size
            on = f"{taken} samples of data.eval"
        else:
            batches, on = [gate_batch(ctx.example_inputs)], "the similarity gate's seeded batch"
        float_graph = load(source.path)  # the reference of the similarity and of the timing alike
        similarity = Similarity(float_graph, batches, load, graph[0].fixed_batch)

        def holds(cosine: float, top1: float | None) -> bool:
            low_cosine = options.min_cosine is not None and cosine < options.min_cosine
            low_top1 = options.min_top1_agreement is not None and top1 is not None and top1 < options.min_top1_agreement
            return not (low_cosine or low_top1)

        def timed(path: Path) -> dict[str, Any]:
            return speed_versus_float(load(path), float_graph, ctx.example_inputs, ctx.device, options.auto.timing_rounds)

        search = AutoSearch(
            quantize=quantize,
            similarity=similarity,
            holds=holds,
            rank=rank,
            compute_nodes=sum(node.op_type in COMPUTE_OPS for node in model.graph.node),
            max_float_share=options.auto.max_float_share,
            time=timed if options.auto.timing_rounds else None,
            folder=work,
        )
        try:
            # reduce_range was chosen (not pinned) for a CPU whose int8 products saturate: uint8 weights avoid it at 8 bits.
            saturates = settings["dynamic"].reduce_range and options.reduce_range == "auto" and options.weight_type == "int8"
            chosen = search.run(starting_candidates(model, options.auto.calibrations, int8_saturates=saturates))
            speed = chosen.speed or {}
            slower = chosen.holds and speed.get("high") is not None and speed["high"] < 1.0
            keep_float = slower and options.auto.keep_float_if_slower
            if not keep_float:
                shutil.copyfile(chosen.path, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        candidate = chosen.candidate
        auto: dict[str, Any] = {"family": graph_family(model)}
        if keep_float:
            auto["chosen"] = {"mode": "float", "scheme": "float (the fastest accurate int8 was slower)", "rejected": chosen.as_dict()}
        else:
            details.update(schemes[candidate.mode])
            if candidate.uint8_weights:
                details.update({"weight_type": "uint8", "reduce_range": False})
            if candidate.mode == "static":
                details["calibration"] = {"method": candidate.method, **record}
            kept = [
                {**search.ranked[node], "why": "fallback: among the nodes losing the most dB (output SQNR, dB lost)"}
                if node in search.ranked
                else {"node": node, "why": "family default: a MatMul of two activations (attention), whose ranges int8 fits poorly"}
                for node in candidate.float_nodes
            ]
            auto["chosen"] = {"mode": candidate.mode, **chosen.as_dict()}
            auto["kept_in_float"] = kept
            # Dynamic int8 leaves the other compute ops in float: ConvInteger is slower than a float Conv on CPUs.
            auto["float_op_types"] = (
                sorted({n.op_type for n in model.graph.node if n.op_type in COMPUTE_OPS} - set(DYNAMIC_OPS))
                if candidate.mode == "dynamic"
                else []
            )
        auto["compared_on"] = f"{similarity.samples} samples: {on}" + (
            f"; detections matched by {similarity.detections['matched_by']} ({similarity.detections['reference']} float detections)"
            if similarity.detections
            else ""
        )
        auto["candidates"] = [trial.as_dict() for trial in search.trials]
        details["auto"] = auto
        if not chosen.holds:
            auto["note"] = "no candidate held the tolerance, the fallback included: the most accurate is kept, and the gate fails it"
        elif slower:
            figure = f"{speed['speedup']:.2f}x [{speed['low']:.2f}-{speed['high']:.2f}] the speed of float, timed side by side"
            auto["note"] = f"the fastest accurate int8 candidate ({candidate.label}) is slower than float on this CPU ({figure}): " + (
                "the float graph is kept (auto.keep_float_if_slower)"
                if keep_float
                else "int8 kept as asked (auto.keep_float_if_slower: false)"
            )
            ctx.logger.warning("quantize_onnx: %s", auto["note"])
        return not keep_float


def keep_float_graph(graph: Any, source: Path, ctx: PassContext) -> Path:
    """The float graph (``graph``, loaded from ``source``) as this stage's product (mode auto found int8
    slower): a copy in the stage folder, its external data (over 2 GiB) beside it."""
    import onnx

    path = ctx.artifact_path("model.onnx")
    external = file_bytes(source) > source.stat().st_size
    if external:
        ctx.artifact_path("model.onnx.data")
    onnx.save_model(graph, str(path), save_as_external_data=external, location="model.onnx.data")
    return path


def _keep_postprocess(graph: Any, exclusion: Exclusion, details: dict[str, Any]) -> Exclusion:
    """``exclusion`` and, for a detector exported with its postprocess, that postprocess (recorded in ``details``)."""
    postprocess = [name for name in detection_postprocess(graph) if name not in exclusion.nodes]
    if not postprocess:
        return exclusion
    details["detection_postprocess"] = {
        "kept_in_float": len(postprocess),
        "why": "a detector's postprocess (anchors, box decoding, score thresholds, top-k, NMS) computes pixel coordinates "
        "and the scores NMS sorts: int8 would put them on a 256-step grid; the network (backbone, heads) is quantized",
    }
    return dataclasses.replace(exclusion, nodes=(*exclusion.nodes, *postprocess))


@hookimpl
def optkit_register_passes(register: Callable[[type[Pass]], None]) -> None:
    """Register :class:`QuantizeOnnx`."""
    register(QuantizeOnnx)
