"""The loss ``finetune`` minimises: distillation from a teacher's softened outputs, cross-entropy on
the labels, or both (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from optkit import StageError

__all__ = ["LossParts", "finetune_loss"]


@dataclass
class LossParts:
    """One batch's loss and what it is made of.

    Attributes:
        total: what is minimised.
        distillation: the distillation term (``None`` without a teacher).
        cross_entropy: the cross-entropy on the labeled samples (``None`` when the batch has no label).
        labeled: how many samples of the batch have a label.
    """

    total: torch.Tensor
    distillation: torch.Tensor | None
    cross_entropy: torch.Tensor | None
    labeled: int


def finetune_loss(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, temperature: float, alpha: float) -> LossParts:
    """``alpha × T² × KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 - alpha) × CE(student, labels)``.

    Without a teacher the loss is the cross-entropy alone; on a batch without labels (label ``-1``)
    the distillation term alone. Samples without a label take part in distillation only.
    The ``T²`` factor keeps the distillation gradients on the scale of the cross-entropy's.

    Args:
        student: the trained model's logits, ``[batch, classes]``.
        teacher: the teacher's logits for the same inputs, or ``None``.
        labels: class indices, ``-1`` for a sample without one.
        temperature: ``T``: softens both distributions.
        alpha: the weight of distillation when the batch has labels.

    Raises:
        StageError: no teacher and no label in the batch: there is nothing to learn from.
    """
    student = student.float()
    labeled = labels >= 0
    count = int(labeled.sum())
    cross_entropy = F.cross_entropy(student[labeled], labels[labeled]) if count else None
    if teacher is None:
        if cross_entropy is None:
            raise StageError(
                "teacher: none trains on labels, but a batch of data.train has none (label -1); "
                "distil from a teacher instead (teacher: baseline or previous)"
            )
        return LossParts(cross_entropy, None, cross_entropy, count)
    distillation = (
        F.kl_div(
            F.log_softmax(student / temperature, dim=1),
            F.log_softmax(teacher.float() / temperature, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )
    if cross_entropy is None:
        return LossParts(distillation, distillation, None, 0)
    return LossParts(alpha * distillation + (1 - alpha) * cross_entropy, distillation, cross_entropy, count)
