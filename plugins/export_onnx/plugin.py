"""The ``export_onnx`` pass: a deployable ONNX file, checked and proven to compute what the
model computes under onnxruntime, measured by the runner under onnxruntime."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, PositiveInt, field_validator
from torch import nn

from optkit import OnnxArtifact, Pass, PassContext, StageError, Tolerance, channel_groups_for, eval_mode, hookimpl
from optkit_plugins.detection_heads import torchvision_detector
from optkit_plugins.export_onnx.exporter import export_onnx_model, output_layout, save_onnx_model, symbolic_batch_dim
from optkit_plugins.export_onnx.selection import exported_module
from optkit_plugins.export_onnx.simplify import simplify_onnx_model
from optkit_plugins.export_onnx.verify import check_onnx_file, measure_parity, parity_by_output, parity_failure, parity_inputs

__all__ = ["ExportOnnx", "optkit_register_passes"]

#: Parity tolerances ``(atol, rtol)`` (``max|Δ| <= atol + rtol * max|reference|``) by export precision.
DEFAULT_TOLERANCE = {"fp32": (1e-5, 1e-3), "fp16": (1e-3, 1e-2)}


class ExportOnnx(Pass):
    """Export an eval copy of the model to ONNX, check it, and verify it against PyTorch.

    The stage's result is an :class:`~optkit.artifacts.OnnxArtifact`: the runner measures it
    under onnxruntime (latency, file size) and carries the module on unchanged.
    """

    name = "export_onnx"
    summary = "Export to ONNX (torch.export, TorchScript fallback) at any opset, valid or refused, verified under onnxruntime."
    # Held to its own atol/rtol (looser for fp16): by the runner on the seeded batch, and by the
    # pass itself on random batches of every size in verify_batch_sizes.
    preserves_outputs = True
    # The file is the next stage's ctx.artifact (quantize_onnx reads it).
    produces = OnnxArtifact

    class Options(Pass.Options):
        """Options of ``export_onnx``."""

        opset: int | None = Field(
            None,
            ge=7,
            le=23,
            description="ONNX opset; default: the exporter's choice (20 with torch 2.14). Each opset gives a valid model or a refusal before export.",
        )
        dynamic_batch: bool = Field(True, description="Make the batch dimension symbolic ('batch') and verify batch sizes 1, 2 and 8.")
        input_name: str = Field(
            "input", min_length=1, description="Name of the graph input of a one-input model (model.inputs names several)."
        )
        outputs: list[int | str] | None = Field(
            None,
            min_length=1,
            description="Outputs to export, by index in the flattened output (0, -1), name (output_0, out, output_1.boxes) or path ([0]); default: all.",
        )
        deployment_output: bool = Field(
            True,
            description="Recognised Ultralytics/YOLOv5 models export their deployment output (the head's export mode), unless outputs is given.",
        )
        output_names: list[str] | None = Field(
            None, description="Names of the graph outputs in order; default: 'output', dict keys, or output_0, output_1, ..."
        )
        simplify: bool = Field(False, description="Simplify the graph with onnxslim; a failure is a warning.")
        fp16: bool = Field(False, description="Export in half precision (CUDA devices only).")
        exporter: Literal["auto", "dynamo", "torchscript"] = Field(
            "auto", description="auto: torch.export-based (dynamo=True), falling back to TorchScript."
        )
        atol: float | None = Field(None, ge=0, description="Parity tolerance, absolute; default 1e-5 (1e-3 with fp16).")
        rtol: float | None = Field(None, ge=0, description="Parity tolerance, relative to max|output|; default 1e-3 (1e-2 with fp16).")
        verify_batch_sizes: list[PositiveInt] = Field(
            default_factory=lambda: [1, 2, 8], min_length=1, description="Batch sizes checked when dynamic_batch is on."
        )

        @field_validator("output_names")
        @classmethod
        def _unique_names(cls, names: list[str] | None) -> list[str] | None:
            if names is not None and (len(set(names)) != len(names) or not all(names)):
                raise ValueError("output names must be non-empty and distinct")
            return names

    options: Options

    def tolerance(self) -> Tolerance:
        """``atol``/``rtol`` of the options; by default 1e-5/1e-3, or 1e-3/1e-2 for an fp16 export."""
        atol, rtol = self._parity_bounds()
        return Tolerance(atol=atol, rtol=rtol)

    def _parity_bounds(self) -> tuple[float, float]:
        """``(atol, rtol)``: the options', or the defaults of the export precision."""
        default_atol, default_rtol = DEFAULT_TOLERANCE["fp16" if self.options.fp16 else "fp32"]
        atol = default_atol if self.options.atol is None else self.options.atol
        rtol = default_rtol if self.options.rtol is None else self.options.rtol
        return atol, rtol

    def device_problem(self, device_type: str) -> str | None:
        """fp16 needs CUDA."""
        if self.options.fp16 and device_type != "cuda":
            return f"export_onnx: fp16 needs a CUDA device, and the pipeline's device is {device_type}; set device: cuda or drop fp16"
        return None

    def apply(self, model: nn.Module, ctx: PassContext) -> OnnxArtifact:
        """Export, simplify (optionally), save, check and verify; returns the artifact.

        The model is exported in eval mode, as deployed, and left as it was given (its modules'
        training flags too): the run carries it on.

        Raises:
            StageError: fp16 off CUDA, no exporter succeeded, the file is invalid, the batch is
                not symbolic though asked for, or onnxruntime and PyTorch disagree.
        """
        with eval_mode(model):
            return self._export(model, ctx)

    def _export(self, model: nn.Module, ctx: PassContext) -> OnnxArtifact:
        options = self.options
        precision = "fp16" if options.fp16 else "fp32"
        if options.fp16 and ctx.device.type != "cuda":
            raise StageError(f"export_onnx: fp16 needs a CUDA device, and this run is on {ctx.device}; set device: cuda or drop fp16")
        detector = torchvision_detector(model)
        if detector is not None and options.dynamic_batch:
            raise StageError(
                f"export_onnx: torchvision's {detector} returns a different number of detections per image and batch, which a "
                "dynamic batch cannot be verified for; set dynamic_batch: false (parity at the input's batch size)"
            )
        atol, rtol = self._parity_bounds()

        # The model is read, not changed: a pass that returns an artifact leaves its model as it got
        # it (the run carries it on). Only what the export changes is copied: fp16 weights, once.
        chosen = exported_module(model, ctx.example_inputs, options.outputs, options.deployment_output, ctx.module_rules)
        module = chosen.module
        if options.fp16:
            module = (module if chosen.copied else copy.deepcopy(module)).half()
        example = ctx.example_inputs.map(lambda t, _: t.half() if t.is_floating_point() else t) if options.fp16 else ctx.example_inputs
        with torch.inference_mode():
            layout = output_layout(example.call(module), options.output_names or chosen.names)
        input_names = [options.input_name] if example.single else example.names

        exported = export_onnx_model(
            module,
            example,
            layout,
            opset=options.opset,
            dynamic_batch=options.dynamic_batch,
            input_names=input_names,
            exporter=options.exporter,
        )
        details = ctx.details
        details.update(chosen.details)
        details.update(
            {
                "exporter": exported.exporter,
                "opset": exported.opset,
                "precision": precision,
                "input_name": input_names[0],
                "input_names": input_names,
                "output_names": layout.names,
                "export_s": round(exported.seconds, 3),
                "export_attempts": exported.attempts,
            }
        )
        if exported.fallback_reason:
            details["fallback_reason"] = exported.fallback_reason

        onnx_model = exported.model
        if options.simplify:
            onnx_model, simplify_error = simplify_onnx_model(onnx_model)
            details["simplified"] = simplify_error is None
            if simplify_error is not None:
                details["simplify_error"] = simplify_error
                ctx.logger.warning("export_onnx: onnxslim failed (%s); keeping the unsimplified model", simplify_error)

        path = ctx.artifact_path("model.onnx")
        data_files = save_onnx_model(onnx_model, path)
        ctx.artifacts.extend(data_files)
        check_onnx_file(path)
        details["onnx_checker"] = "passed"
        batch_dim = symbolic_batch_dim(onnx_model)
        details["batch_dim"] = batch_dim
        if options.dynamic_batch and batch_dim is None:
            raise StageError("export_onnx: dynamic_batch is on but the graph's batch dimension is fixed (after simplification)")

        artifact = OnnxArtifact(
            path=path,
            source_model=model,
            output_names=layout.names,
            output_structure=layout.structure,
            output_selection=chosen.selection,
        )
        inputs = parity_inputs(ctx.example_inputs, options.verify_batch_sizes, options.dynamic_batch)
        with torch.inference_mode():
            groups = channel_groups_for(chosen.module, ctx.example_inputs.call(chosen.module), ctx.module_rules)
        # Detection scores closer than twice the allowed error may swap places: not compared.
        figures = measure_parity(chosen.module, artifact.load(ctx.device), inputs, groups, score_ties=2 * (atol + rtol))
        details["parity"] = {
            "runtime": "onnxruntime",
            "device": str(ctx.device),
            "atol": atol,
            "rtol": rtol,
            "inputs": {label: parity.as_details() for label, parity in figures.items()},
            "max_abs": max((p.drift.max_abs for p in figures.values() if p.drift.comparable), default=None),
            "per_output": parity_by_output(figures, atol, rtol),
        }
        unchecked: dict[str, list[str]] = {}
        for label, parity in figures.items():
            if parity.drift.detections_warning:
                unchecked.setdefault(parity.drift.detections_warning, []).append(label)
        for warning, labels in unchecked.items():
            details.setdefault("warnings", []).append(f"parity on input {', '.join(labels)}: {warning}")
            ctx.logger.warning("export_onnx: parity on input %s: %s", ", ".join(labels), warning)
        problem = parity_failure(figures, atol, rtol)
        if problem is not None:
            shapes_differ = not all(parity.drift.comparable for parity in figures.values())
            advice = "no atol/rtol accepts outputs of another shape" if shapes_differ else "raise the pass's atol/rtol to accept it"
            raise StageError(f"export_onnx: {problem}; {advice}")
        return artifact


@hookimpl
def optkit_register_passes(register: Callable[[type[Pass]], None]) -> None:
    """Register :class:`ExportOnnx`."""
    register(ExportOnnx)
