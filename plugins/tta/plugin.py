"""The ``tta`` pass: wrap the model in :class:`~optkit_plugins.tta.wrapper.TestTimeAugmentation`
after working out what each of its outputs is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator
from torch import nn

from optkit import ExampleInputs, Pass, PassContext, StageError, count_macs, hookimpl
from optkit_plugins.tta.box_lists import BoxListTTA, box_list_problem
from optkit_plugins.tta.flip_check import flip_warnings
from optkit_plugins.tta.image_inputs import first_image, image_inputs_problem
from optkit_plugins.tta.kinds import OutputPlan, UnknownOutputError, plan_outputs
from optkit_plugins.tta.wrapper import SAME_SHAPE_SCALES, TestTimeAugmentation, padded_size

__all__ = ["TTA", "optkit_register_passes"]


class TTA(Pass):
    """Wrap the model in :class:`TestTimeAugmentation`, each output merged by its kind."""

    name = "tta"
    summary = "Test-time augmentation: run the model at several scales and flips in one forward and merge each output by its kind."
    preserves_outputs = False

    class Options(Pass.Options):
        """Options of ``tta``."""

        scales: list[PositiveFloat] = Field([1.0, 0.83, 0.67], min_length=1, description="Resize factors (1.0: as is).")
        flips: list[Literal["horizontal", "vertical"]] = Field(
            ["horizontal"], description="Flipped branches added at every scale (the unflipped one always runs)."
        )
        merge: Literal["mean", "softmax"] = Field(
            "mean", description="Classification and dense outputs: mean averages them (logits); softmax averages probabilities over dim 1."
        )
        stride: PositiveInt = Field(
            32, description="Scaled inputs are padded to a multiple of this (default: 32; a recognised YOLO model's largest stride)."
        )
        pad_value: float = Field(0.0, description="Padding fill (0.0 = mean of a normalised image; YOLOv5/Ultralytics: 0.447).")
        same_shape: bool = Field(
            False,
            description="Pad back to the input size (models with a fixed input size); not set: chosen when the model fails at a scaled input.",
        )
        output: Literal["classification", "dense", "flow", "detection"] | None = Field(
            None,
            description="What the output is, for models TTA does not recognise: detection = YOLO layout [B, 4+nc, anchors], "
            "xywh in input pixels; flow = a [B, 2, h, w] vector field (u, v in input pixels), whose vectors are un-flipped and rescaled too.",
        )
        output_index: int | str | None = Field(
            None, description="With output: which output it is about, by flattened index or path ([0]), when the model returns several."
        )
        flip_idx: list[int] | None = Field(None, description="Pose models under a horizontal flip: which keypoint mirrors which.")
        descale: Literal["exact", "nominal"] = Field(
            "exact", description="Detections are mapped back by the exact ratio of sizes, or by 1/scale as YOLOv5 does."
        )

        @field_validator("scales", "flips")
        @classmethod
        def _no_repeats(cls, value: list[Any]) -> list[Any]:
            if len(set(value)) != len(value):
                raise ValueError(f"lists a value twice: {value}")
            return value

        @model_validator(mode="after")
        def _consistent(self) -> TTA.Options:
            if self.same_shape and any(s > 1.0 for s in self.scales):
                raise ValueError(SAME_SHAPE_SCALES)
            if self.output_index is not None and self.output is None:
                raise ValueError("output_index says which output `output` declares; set output too")
            return self

    options: Options

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        """Plan the outputs on the example inputs, wrap the model, and run the wrapper once.

        Returns:
            The :class:`TestTimeAugmentation` wrapper.

        Raises:
            StageError: before any work, a model with no image input or with image inputs of
                different sizes at scales other than 1; an output TTA cannot merge (the message
                says what to declare), keypoints flipped without ``flip_idx``, or a model that fails
                on the augmented inputs.
        """
        opts = self.options
        inputs = ctx.example_inputs
        problem = image_inputs_problem(inputs, opts.scales)
        if problem is not None:
            raise StageError(problem)
        image = first_image(inputs.args, inputs.kwargs)  # the reference: outputs are restored to its size
        with torch.inference_mode():
            output = inputs.call(model)
        same_shape = opts.same_shape
        plan: OutputPlan | None = None
        if isinstance(output, list) and output and all(isinstance(d, dict) for d in output):
            wrapped: TestTimeAugmentation = self._run_once(self._box_list_wrapper(model, output, ctx, image), inputs)
        else:
            plan = self._plan(model, output, image)
            stride = opts.stride
            if plan.yolo is not None and plan.yolo.strides and "stride" not in opts.model_fields_set:
                stride = int(max(plan.yolo.strides))
            try:
                wrapped = self._wrap_and_run(model, inputs, plan, stride, same_shape)
            except StageError as exc:
                # A model of one input size (ViT, Swin, LeViT) rejects the scaled inputs: padded back to
                # the input size they run, unless the pipeline said same_shape: false.
                if same_shape or "same_shape" in opts.model_fields_set or any(s > 1.0 for s in opts.scales) or exc.__cause__ is None:
                    raise
                wrapped = self._wrap_and_run(model, inputs, plan, stride, same_shape=True)
                same_shape = True
                plan.notes.append(
                    f"the model takes one input size only ({type(exc.__cause__).__name__} at a scaled input): scaled inputs are "
                    "padded back to the input size (same_shape: true)"
                )
                ctx.logger.info("tta: %s", plan.notes[-1])
        height, width = (int(d) for d in image.shape[-2:])
        base_macs = count_macs(model, inputs)["macs"]
        tta_macs = count_macs(wrapped, inputs)["macs"]
        ctx.details.update(
            branches=[
                {
                    "scale": scale,
                    "flip": flip or "none",
                    "input_hw": list(_branch_size(scale, height, width, wrapped.stride, same_shape)),
                }
                for scale, flip in wrapped.branches
            ],
            same_shape=same_shape,
            stride=wrapped.stride,
            base_macs=base_macs,
            tta_macs=tta_macs,
            cost_multiplier=tta_macs / base_macs if base_macs else None,
        )
        if plan is not None:
            ctx.details.update(merge=opts.merge, outputs=plan.describe(), outputs_from=plan.source)
            if plan.notes:
                ctx.details["notes"] = plan.notes
            warnings = [w for flip in opts.flips for w in flip_warnings(model, inputs, plan, flip)]
            if warnings:
                ctx.details["warnings"] = warnings
                for warning in warnings:
                    ctx.logger.warning("tta: %s", warning)
        ctx.logger.info("tta: %d branches, %.2fx the MACs", len(wrapped.branches), ctx.details["cost_multiplier"] or 0)
        return wrapped

    def _wrap_and_run(
        self, model: nn.Module, example: ExampleInputs, plan: OutputPlan, stride: int, same_shape: bool
    ) -> TestTimeAugmentation:
        """The wrapper, run once on ``example`` (see :meth:`_run_once`)."""
        opts = self.options
        wrapped = TestTimeAugmentation(
            model, opts.scales, opts.flips, opts.merge, stride, opts.pad_value, same_shape, plan=plan, descale=opts.descale
        )
        return self._run_once(wrapped, example)

    @staticmethod
    def _run_once(wrapped: TestTimeAugmentation, example: ExampleInputs) -> TestTimeAugmentation:
        """Run ``wrapped`` once on ``example``.

        Raises:
            StageError: keypoints flipped without ``flip_idx``, or the model fails on the augmented
                inputs (chained to the model's error).
        """
        try:
            with torch.inference_mode():
                example.call(wrapped)
        except ValueError as exc:  # restore_detections: keypoints flipped without flip_idx
            raise StageError(f"tta: {exc}") from None
        # A model with a fixed input size rejects the scaled inputs (ViT asserts, others raise
        # RuntimeError on a shape mismatch): say which option fixes it.
        except (RuntimeError, AssertionError) as exc:
            hint = "" if wrapped.same_shape else "; models with a fixed input size need same_shape: true"
            raise StageError(f"the model fails on the augmented inputs ({type(exc).__name__}: {exc}){hint}") from exc
        return wrapped

    def _box_list_wrapper(self, model: nn.Module, output: list[Any], ctx: PassContext, image: torch.Tensor) -> BoxListTTA:
        """The wrapper for a detector returning a list of dicts per image (torchvision's detectors).

        Raises:
            StageError: dicts that are not boxes, scores and labels, or options for other outputs.
        """
        opts = self.options
        problem = box_list_problem(output, int(image.shape[0]))
        if problem is not None:
            raise StageError(f"tta: the model returns a list of dicts per image, but {problem}")
        other = [name for name in ("output", "output_index", "flip_idx") if getattr(opts, name) is not None]
        other += [name for name in ("merge", "descale") if name in opts.model_fields_set]
        if other:
            raise StageError(
                f"tta: {', '.join(other)} are for tensor outputs; this model's per-image detections (boxes, scores, labels) "
                "are merged by class-wise NMS at the model's own IoU threshold"
            )
        wrapped = BoxListTTA(model, opts.scales, opts.flips, opts.stride, opts.pad_value, opts.same_shape)
        ctx.details.update(
            merge=f"batched_nms (IoU {wrapped.iou:g}, at most {wrapped.limit} per image)",
            outputs="per-image detections: boxes (xyxy, de-scaled and un-flipped), scores, labels",
            outputs_from="recognised: a list of dicts of boxes, scores and labels (torchvision's detectors)",
        )
        return wrapped

    def _plan(self, model: nn.Module, output: Any, example: torch.Tensor) -> OutputPlan:
        """Decide how each of ``output`` (the model's on ``example``) is merged.

        Raises:
            StageError: an output TTA cannot merge (the message says what to declare).
        """
        opts = self.options
        try:
            return plan_outputs(
                model,
                output,
                (int(example.shape[-2]), int(example.shape[-1])),
                int(example.shape[0]),
                declared=opts.output,
                output_index=opts.output_index,
                flip_idx=tuple(opts.flip_idx) if opts.flip_idx is not None else None,
            )
        except UnknownOutputError as exc:
            raise StageError(str(exc)) from exc


def _branch_size(scale: float, height: int, width: int, stride: int, same_shape: bool) -> tuple[int, int]:
    """The input size a branch runs at (as :meth:`TestTimeAugmentation._rescale` makes it)."""
    if scale == 1.0 or same_shape:
        return height, width
    return padded_size(int(height * scale), stride), padded_size(int(width * scale), stride)


@hookimpl
def optkit_register_passes(register: Callable[[type[Pass]], None]) -> None:
    """Register :class:`TTA`."""
    register(TTA)
