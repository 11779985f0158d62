"""The training loop of ``finetune``: SGD with momentum (or AdamW), a cosine schedule, mixed
precision on CUDA, a progress report every step, and a stop at the first loss that is not finite."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from optkit import ExampleInputs, PipelineError, StageError, classifier_outputs
from optkit_plugins.finetune.batchnorm import frozen_batchnorm
from optkit_plugins.finetune.loss import finetune_loss

__all__ = ["TrainingSettings", "EpochRecord", "StepReport", "train", "autocast_dtype", "logits"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSettings:
    """How to train (the options of ``finetune`` that shape the loop).

    Attributes:
        steps: optimizer steps in all.
        lr: the peak learning rate.
        optimizer: ``sgd`` (momentum ``momentum``) or ``adamw``.
        momentum: SGD's momentum.
        weight_decay: L2 (SGD) or decoupled (AdamW) weight decay.
        schedule: ``cosine`` (from ``lr`` down to 0 over ``steps``) or ``constant``.
        temperature: softens the teacher's and the student's outputs for distillation.
        alpha: the weight of distillation against cross-entropy on labels.
        amp: mixed precision (CUDA only).
    """

    steps: int
    lr: float
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    temperature: float = 4.0
    alpha: float = 0.7
    amp: bool = True


@dataclass
class EpochRecord:
    """What one epoch did: its mean losses (per sample), steps, samples and time."""

    epoch: int
    steps: int = 0
    samples: int = 0
    loss: float = 0.0
    distillation: float | None = None
    cross_entropy: float | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class StepReport:
    """Handed to the progress callback after every step."""

    step: int
    steps: int
    epoch: int
    epochs: int
    loss: float
    samples_per_s: float


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The mixed-precision type on ``device``: bfloat16 where the GPU has it, else float16; ``None`` on CPU or when off."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def logits(outputs: Any) -> torch.Tensor:
    """The ``[batch, classes]`` logits of a model's outputs (its first tensor).

    Raises:
        StageError: the first output is not ``[batch, classes]``.
    """
    try:
        return classifier_outputs(outputs, "finetune")
    except PipelineError as exc:
        raise StageError(exc.message.replace("; set measure.accuracy: false", "")) from None


def train(
    student: nn.Module,
    teacher: nn.Module | None,
    batches: Iterable[tuple[Any, torch.Tensor]],
    settings: TrainingSettings,
    *,
    device: torch.device,
    classes: int,
    on_step: Callable[[StepReport], Any] | None = None,
) -> list[EpochRecord]:
    """Train ``student``'s trainable parameters (in place) for ``settings.steps`` steps.

    Args:
        student: the model to train; it is left in eval mode.
        teacher: the model to distil from (eval mode, not trained), or ``None``.
        batches: ``(inputs, labels)`` batches on ``device``, inputs a tensor or a tuple or dict of them; read again for every epoch.
        settings: optimizer, schedule, loss and precision.
        device: where the models are (mixed precision on CUDA).
        classes: the student's outputs (labels must be below it).
        on_step: called after every step.

    Returns:
        One record per epoch (the last one may be partial with ``max_steps``).

    Raises:
        StageError: nothing is trainable, a label is not an output index, or the loss is not
            finite (the step and epoch named); the caller's model before training is its own copy.
    """
    parameters = [p for p in student.parameters() if p.requires_grad]
    if not parameters:
        raise StageError("every parameter is frozen: nothing to train (check freeze, and reclassify's freeze)")
    optimizer = _optimizer(parameters, settings)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps) if settings.schedule == "cosine" else None
    dtype = autocast_dtype(device, settings.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype is not None else contextlib.nullcontext
    per_epoch = len(batches)  # type: ignore[arg-type]
    epochs = math.ceil(settings.steps / per_epoch)
    frozen = frozen_batchnorm(student)
    records: list[EpochRecord] = []
    step = 0
    try:
        for epoch in range(1, epochs + 1):
            student.train()
            for layer in frozen:
                layer.eval()
            record = EpochRecord(epoch)
            sums = {"loss": 0.0, "distillation": 0.0, "cross_entropy": 0.0, "labeled": 0}
            start = time.perf_counter()
            for inputs, labels in batches:
                _check_labels(labels, classes)
                example = ExampleInputs.of(inputs)  # one tensor, or a tuple or dict of them (model.inputs)
                with autocast():
                    student_logits = logits(example.call(student))
                    if teacher is not None:
                        with torch.no_grad():
                            teacher_logits = logits(example.call(teacher))
                    else:
                        teacher_logits = None
                parts = finetune_loss(student_logits, teacher_logits, labels, settings.temperature, settings.alpha)
                value = parts.total.item()
                step += 1
                if not math.isfinite(value):
                    raise StageError(
                        f"the loss is {value} at step {step} (epoch {epoch}); training stopped there and the stage fails "
                        f"(the stages before it are kept); lower lr (now {settings.lr:g}) or check data.train"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(parts.total).backward()
                scaler.step(optimizer)
                scaler.update()
                if schedule is not None:
                    schedule.step()
                size = example.batch_size
                record.steps += 1
                record.samples += size
                sums["loss"] += value * size
                if parts.distillation is not None:
                    sums["distillation"] += parts.distillation.item() * size
                if parts.cross_entropy is not None:
                    sums["cross_entropy"] += parts.cross_entropy.item() * parts.labeled
                    sums["labeled"] += parts.labeled
                if on_step is not None:
                    elapsed = time.perf_counter() - start
                    on_step(StepReport(step, settings.steps, epoch, epochs, value, record.samples / max(elapsed, 1e-9)))
                if step == settings.steps:
                    break
            record.seconds = time.perf_counter() - start
            record.loss = sums["loss"] / max(record.samples, 1)
            if teacher is not None:
                record.distillation = sums["distillation"] / max(record.samples, 1)
            if sums["labeled"]:
                record.cross_entropy = sums["cross_entropy"] / sums["labeled"]
            records.append(record)
            log.info("finetune epoch %d/%d: loss %.4f, %d samples in %.1f s", epoch, epochs, record.loss, record.samples, record.seconds)
    finally:
        student.eval()
    return records


def _optimizer(parameters: list[nn.Parameter], settings: TrainingSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(parameters, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)


def _check_labels(labels: torch.Tensor, classes: int) -> None:
    """A label at or past the model's outputs would index nothing (cross-entropy fails obscurely)."""
    if labels.numel() and (largest := int(labels.max())) >= classes:
        raise StageError(
            f"data.train has label {largest}, but the model has {classes} outputs; labels are output indices, "
            f"so the data set needs one class per output"
        )
