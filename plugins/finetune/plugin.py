"""The ``finetune`` pass: train the current model on ``data.train``, distilling from the model
before (the baseline, or the previous stage's), to give back the accuracy pruning took, or to train
a new head after ``reclassify``. ``bn_recalibrate`` is the cheap fix: BatchNorm statistics
re-estimated on training batches, with no gradient step (``epochs: 0, bn_recalibrate: true``)."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterator
from typing import Any, Literal

import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator
from torch import nn

from optkit import ALL_BUT_HEAD, ExampleInputs, Pass, PassContext, StageError, apply_freeze, evaluate, flatten_outputs, hookimpl
from optkit_plugins.detection_heads import torchvision_detector
from optkit_plugins.finetune.batchnorm import batchnorm_layers, recalibrate_batchnorm
from optkit_plugins.finetune.training import StepReport, TrainingSettings, autocast_dtype, logits, train

__all__ = ["FineTune", "optkit_register_passes"]

log = logging.getLogger(__name__)


class FineTune(Pass):
    """Train the model on data.train by distillation from the model before, and/or recalibrate BatchNorm."""

    name = "finetune"
    summary = (
        "Train on data.train, distilling from the baseline (or previous) model: accuracy back after pruning, a new head after reclassify."
    )
    preserves_outputs = False

    class Options(Pass.Options):
        """Options of ``finetune``."""

        epochs: NonNegativeInt = Field(3, description="Passes over data.train (0 with bn_recalibrate: recalibrate only).")
        max_steps: PositiveInt | None = Field(None, description="Optimizer steps in all, instead of epochs.")
        lr: PositiveFloat = Field(0.01, description="Peak learning rate.")
        optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (momentum 0.9) or adamw.")
        momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
        weight_decay: NonNegativeFloat = Field(5e-4, description="Weight decay (L2 for sgd, decoupled for adamw).")
        schedule: Literal["cosine", "constant"] = Field("cosine", description="cosine: lr decays to 0 over the training.")
        teacher: Literal["auto", "baseline", "previous", "none"] = Field(
            "auto",
            description="Distil from the baseline model, the previous stage's model, or none (labels only); "
            "auto: the baseline when it has the model's number of outputs, else none.",
        )
        temperature: PositiveFloat = Field(4.0, description="Softens teacher and student outputs for distillation.")
        alpha: float = Field(0.7, ge=0.0, le=1.0, description="Weight of distillation; 1 - alpha goes to cross-entropy on labels.")
        freeze: list[str] | None = Field(
            None, description=f"Parameters not trained in this stage: module names, globs, or {ALL_BUT_HEAD} (as model.freeze)."
        )
        batch_size: PositiveInt | None = Field(None, description="Samples per step; default: data.train's batch_size.")
        seed: int = Field(0, description="Seeds the shuffling and any randomness of training.")
        bn_recalibrate: bool = Field(False, description="Re-estimate BatchNorm statistics on bn_batches train batches after training.")
        bn_batches: PositiveInt = Field(50, description="Train batches bn_recalibrate reads.")
        amp: bool = Field(True, description="Mixed precision on CUDA (bfloat16 where supported, else float16).")
        evaluate: bool = Field(True, description="Measure top-1 on data.eval before and after training, for details.")

        @field_validator("freeze", mode="before")
        @classmethod
        def _one_pattern_is_a_list(cls, value: Any) -> Any:
            return [value] if isinstance(value, str) else value

        @model_validator(mode="after")
        def _something_to_do(self) -> FineTune.Options:
            if self.epochs == 0 and self.max_steps is None and not self.bn_recalibrate:
                raise ValueError("nothing to do: give epochs >= 1, max_steps, or bn_recalibrate: true")
            return self

    options: Options

    @property
    def needs_baseline_model(self) -> bool:  # type: ignore[override]
        """The runner keeps the baseline for ``teacher: baseline`` (and ``auto``)."""
        return self.options.teacher in ("baseline", "auto")

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        """Train ``model`` in place (the runner hands a pass a model it may change, and keeps the
        baseline itself); ``teacher: previous`` keeps a frozen copy of it from before training.

        Raises:
            StageError: no ``data.train``; outputs that do not match the labels' classes or the
                teacher's; every parameter frozen; a loss that is not finite (with its step).
        """
        opts = self.options
        if opts.bn_recalibrate and not ctx.example_inputs.single:  # torch's update_bn feeds one input tensor per batch
            raise StageError(
                f"finetune: bn_recalibrate feeds one input tensor per batch, and this model takes {len(ctx.example_inputs.defs)} "
                f"({', '.join(ctx.example_inputs.names)}); set bn_recalibrate: false"
            )
        detector = torchvision_detector(model)
        if detector is not None:
            raise StageError(
                f"finetune trains classifiers on (image, class) samples with cross-entropy; torchvision's {detector} "
                "trains on box targets with its own detection losses, which finetune does not give it"
            )
        classes = _classes(model, ctx.example_inputs)
        train_data = ctx.require_data("train")
        _check_classes(train_data, classes)
        teacher = self._teacher(model, ctx, classes)
        student = model  # the model is this stage's to change: trained in place, no copy
        trainable = {name: p.requires_grad for name, p in student.named_parameters()}
        if opts.freeze:
            ctx.details["freeze"] = apply_freeze(student, opts.freeze, option="finetune option freeze")
        trained_params = sum(p.numel() for p in student.parameters() if p.requires_grad)
        size = len(train_data.dataset)  # type: ignore[attr-defined]
        batch_size = opts.batch_size or train_data.batch_size or 64  # type: ignore[attr-defined]
        # A last batch of one sample cannot train BatchNorm: epochs drop the incomplete batch (as timm does).
        batches = train_data.batched(batch_size, seed=opts.seed, drop_last=size > batch_size)  # type: ignore[attr-defined]
        steps = opts.max_steps or opts.epochs * len(batches)
        before = self._accuracy(model, ctx)
        start = time.perf_counter()
        with _seeded(opts.seed, ctx.device):
            records = []
            if steps:
                settings = TrainingSettings(
                    steps=steps,
                    lr=opts.lr,
                    optimizer=opts.optimizer,
                    momentum=opts.momentum,
                    weight_decay=opts.weight_decay,
                    schedule=opts.schedule,
                    temperature=opts.temperature,
                    alpha=opts.alpha,
                    amp=opts.amp,
                )
                records = train(
                    student,
                    teacher,
                    batches,
                    settings,
                    device=ctx.device,
                    classes=classes,
                    on_step=lambda report: _report_step(ctx, report),
                )
            if opts.bn_recalibrate:
                ctx.details["bn_recalibrate"] = self._recalibrate(student, batches, ctx, trained=bool(steps))
        seconds = time.perf_counter() - start
        for name, parameter in student.named_parameters():  # freeze holds for this stage only
            parameter.requires_grad_(trainable[name])
        student.eval()
        samples = sum(r.samples for r in records)
        amp = autocast_dtype(ctx.device, opts.amp) if steps else None
        ctx.details.update(
            steps=sum(r.steps for r in records),
            epochs=len(records),
            batch_size=batch_size,
            samples_seen=samples,
            seconds=round(seconds, 3),
            samples_per_s=round(samples / seconds, 1) if samples and seconds > 0 else None,
            loss_curve=[r.as_dict() for r in records],
            optimizer={
                "name": opts.optimizer,
                "lr": opts.lr,
                "schedule": opts.schedule,
                "weight_decay": opts.weight_decay,
                **({"momentum": opts.momentum} if opts.optimizer == "sgd" else {}),
            },
            distillation={"temperature": opts.temperature, "alpha": opts.alpha} if teacher is not None else None,
            amp=str(amp).removeprefix("torch.") if amp is not None else None,
            trainable_params=trained_params,
            accuracy_before=before,
            accuracy_after=self._accuracy(student, ctx),
        )
        return student

    def _teacher(self, model: nn.Module, ctx: PassContext, classes: int) -> nn.Module | None:
        """The model to distil from, per option ``teacher``; ``details.teacher`` says which."""
        choice = self.options.teacher
        if choice == "none":
            ctx.details["teacher"] = "none"
            return None
        teacher: nn.Module | None
        if choice == "previous":
            # The student is the model itself, trained in place: the teacher is what it was before.
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
        else:
            teacher = ctx.baseline_model
            if teacher is None:
                raise StageError(
                    f"teacher: {choice} distils from the baseline model, which the runner could not keep (see the warning "
                    "above); use teacher: previous or none"
                )
        with torch.no_grad():
            teacher_classes = logits(ctx.example_inputs.call(teacher)).shape[1]
        if teacher_classes != classes:
            if choice == "auto":
                ctx.details["teacher"] = "none"
                ctx.details["teacher_note"] = (
                    f"auto: the baseline has {teacher_classes} outputs and the model {classes}, so no distillation: labels only"
                )
                return None
            raise StageError(
                f"teacher: {choice} has {teacher_classes} outputs but the model has {classes}; distillation needs the same "
                "classes: use teacher: none (train on labels), e.g. for the new head of reclassify"
            )
        ctx.details["teacher"] = "baseline" if choice == "auto" else choice
        return teacher

    def _accuracy(self, model: nn.Module, ctx: PassContext) -> dict[str, Any] | None:
        """Top-1 (and top-5) on data.eval, when there is one and it has labels."""
        if not self.options.evaluate or ctx.data is None or ctx.data.eval is None:
            return None
        accuracy = evaluate(model, ctx.data.eval, ctx.device).accuracy()
        return accuracy.model_dump(mode="json") if accuracy is not None else None  # details hold JSON

    def _recalibrate(self, student: nn.Module, batches: Any, ctx: PassContext, trained: bool) -> dict[str, Any]:
        if not batchnorm_layers(student):
            if not trained:
                raise StageError(
                    "bn_recalibrate: the model has no BatchNorm layer to recalibrate (fuse_bn before it folds them away; "
                    "put finetune before fuse_bn, or train with epochs)"
                )
            ctx.logger.warning("finetune: bn_recalibrate: the model has no BatchNorm layer; nothing recalibrated")
        total = min(self.options.bn_batches, len(batches))
        return recalibrate_batchnorm(student, batches, total, on_batch=lambda done: ctx.report_progress("bn_recalibrate", done, total))


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the CPU generator, and the stage's GPU's, in a scope that puts them back afterwards
    (``torch.manual_seed`` would reseed every GPU's generator for good)."""
    gpu = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpu):
        torch.default_generator.manual_seed(seed)
        for index in gpu:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def _classes(model: nn.Module, example: ExampleInputs) -> int:
    """The model's classes: the width of its ``[batch, classes]`` logits.

    Raises:
        StageError: the first output is no ``[batch, classes]`` tensor (a segmentation map, say).
    """
    with torch.no_grad():
        outputs = example.call(model)
    first = next(iter(flatten_outputs(outputs)), None)
    if first is None or first.dim() != 2:
        shape = list(first.shape) if first is not None else type(outputs).__name__
        kind = " (a dense map: segmentation, depth)" if first is not None and first.dim() == 4 else ""
        raise StageError(
            f"finetune trains classifiers: cross-entropy of [batch, classes] logits against class labels; the model's first "
            f"output is {shape}{kind}, which it does not train"
        )
    return int(first.shape[1])


def _check_classes(train_data: Any, classes: int) -> None:
    """A data set that names its classes must have one per output.

    Raises:
        StageError: naming both counts.
    """
    names = getattr(train_data, "classes", None)
    if names is None or len(names) == classes:
        return
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise StageError(
        f"data.train has {len(names)} classes ({shown}), but the model has {classes} outputs; labels are output indices, "
        f"so train on a data set with one class per output, or give the model {len(names)} outputs (reclassify: {{num_classes: {len(names)}}})"
    )


def _report_step(ctx: PassContext, report: StepReport) -> None:
    ctx.report_progress(
        "train",
        report.step,
        report.steps,
        epoch=f"{report.epoch}/{report.epochs}",
        loss=round(report.loss, 4),
        **{"samples/s": round(report.samples_per_s)},
    )


@hookimpl
def optkit_register_passes(register):
    """Register :class:`FineTune`."""
    register(FineTune)
