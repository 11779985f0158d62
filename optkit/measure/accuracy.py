"""Accuracy on data: top-1/top-5 accuracy of a module or an artifact over ``(inputs, labels)``
batches, agreement with the baseline's top-1 sample by sample, similarity to the stage before
(top-1 agreement and cosine of the outputs on real samples), and the accuracy budget."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from optkit.artifacts import Artifact
from optkit.errors import PipelineError, StageError
from optkit.inputs import ExampleInputs
from optkit.measure.outputs import flatten_outputs
from optkit.models.layers import eval_mode
from optkit.results import Accuracy, Agreement, Similarity

__all__ = ["LOGITS_KEPT", "Evaluation", "evaluate", "classifier_outputs", "agreement_with", "similarity_to", "AccuracyTracker"]

log = logging.getLogger(__name__)

#: Output values an evaluation keeps for the cosine against the stage before (64 MiB of float32):
#: every sample's logits for small label sets, the first ~16,000 samples' for 1,000 classes.
LOGITS_KEPT = 2**24


@dataclass
class Evaluation:
    """What a model predicted on a data set.

    Attributes:
        predictions: the top-1 class of every sample, in data order (int64, CPU).
        top5: whether each sample's label is among the 5 highest outputs (``None`` with fewer than 5 classes).
        labels: each sample's label (``-1``: none), CPU.
        classes: the number of outputs.
        seconds: how long evaluating took.
        logits: the outputs (float32, CPU) of the first samples, up to :data:`LOGITS_KEPT` values.
        nonfinite_inputs: samples whose input holds NaN or an infinity (their predictions mean nothing).
    """

    predictions: torch.Tensor
    top5: torch.Tensor | None
    labels: torch.Tensor
    classes: int
    seconds: float = 0.0
    logits: torch.Tensor | None = None
    nonfinite_inputs: int = 0

    @property
    def labeled(self) -> torch.Tensor:
        """Which samples have a label."""
        return self.labels >= 0

    def accuracy(self) -> Accuracy | None:
        """Top-1 (and top-5 with 5 or more classes) over the labeled samples; ``None`` without labels."""
        labeled = self.labeled
        n = int(labeled.sum())
        if n == 0:
            return None
        return Accuracy(
            top1=float((self.predictions[labeled] == self.labels[labeled]).double().mean()),
            top5=float(self.top5[labeled].double().mean()) if self.top5 is not None else None,
            n=n,
            nonfinite_inputs=self.nonfinite_inputs or None,
        )


def classifier_outputs(outputs: Any, where: str) -> torch.Tensor:
    """The ``[batch, classes]`` logits of a model's outputs (its first tensor).

    Raises:
        PipelineError: the first output is not a 2-D ``[batch, classes]`` tensor.
    """
    tensors = flatten_outputs(outputs)
    if not tensors or tensors[0].dim() != 2:
        shape = list(tensors[0].shape) if tensors else None
        raise PipelineError(
            f"{where}: accuracy needs classifier outputs [batch, classes], but the model's first output is "
            f"{shape if shape is not None else type(outputs).__name__}; set measure.accuracy: false"
        )
    return tensors[0]


def evaluate(subject: nn.Module | Artifact, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> Evaluation:
    """Run ``subject`` over every batch and keep its top-1 (and top-5 hits) per sample.

    A module runs under torch in eval mode (every ``training`` flag restored afterwards), an artifact
    under its own runtime (:meth:`optkit.artifacts.Artifact.load`).

    Args:
        subject: a stage's product.
        batches: ``(inputs, labels)`` batches (e.g. :class:`optkit.data.loaders.DeviceLoader`); labels ``-1``
            for samples without one.
        device: where the artifact runs (a module runs where its parameters are).

    Raises:
        StageError: the outputs are not ``[batch, classes]``, or a label is not one of the outputs.
    """
    start = time.perf_counter()
    if isinstance(subject, Artifact):
        run = subject.load(device)
        in_eval: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    else:
        run = subject
        in_eval = eval_mode(subject)
    predictions, hits, all_labels, kept = [], [], [], []
    classes = kept_values = nonfinite = 0
    with in_eval, torch.inference_mode():
        for inputs, labels in batches:
            example = ExampleInputs.of(inputs)
            nonfinite += _nonfinite_samples(example)
            try:
                logits = classifier_outputs(example.call(run), "data.eval").detach().cpu()
            except PipelineError as exc:
                raise StageError(exc.message) from None
            labels = labels.cpu()
            classes = logits.shape[1]
            if kept_values < LOGITS_KEPT:
                kept.append(logits[: max(1, (LOGITS_KEPT - kept_values) // max(classes, 1))].float())
                kept_values += kept[-1].numel()
            if int(labels.max()) >= classes:
                raise StageError(
                    f"data.eval has label {int(labels.max())}, but the model has {classes} outputs (labels must be output indices)"
                )
            predictions.append(logits.argmax(1))
            if classes >= 5:
                top5 = logits.topk(5, dim=1).indices
                hits.append((top5 == labels.clamp(min=0).unsqueeze(1)).any(1))
            all_labels.append(labels)
    return Evaluation(
        predictions=torch.cat(predictions),
        top5=torch.cat(hits) if hits else None,
        labels=torch.cat(all_labels),
        classes=classes,
        seconds=time.perf_counter() - start,
        logits=torch.cat(kept) if kept else None,
        nonfinite_inputs=nonfinite,
    )


def agreement_with(evaluation: Evaluation, reference: Evaluation) -> Agreement:
    """A stage's ``agreement`` with ``reference`` (the baseline): the share of samples whose top-1 equals
    the reference's, or ``comparable: false`` when the two do not have the same number of outputs."""
    n = len(evaluation.predictions)
    if evaluation.classes != reference.classes or n != len(reference.predictions):
        return Agreement(comparable=False, classes=evaluation.classes, reference_classes=reference.classes)
    return Agreement(top1=float((evaluation.predictions == reference.predictions).double().mean()), n=n)


def similarity_to(evaluation: Evaluation, previous: Evaluation) -> Similarity:
    """How closely ``evaluation`` follows ``previous`` (the stage before) on the same samples.

    Returns:
        ``top1`` (the share of samples whose top-1 is the same), ``cosine`` (of the kept logits,
        all flattened together, as drift's cosine), ``n`` (samples) and ``cosine_n`` (samples
        the cosine covers); ``comparable: false`` when the two do not have the same outputs.
    """
    n = len(evaluation.predictions)
    if evaluation.classes != previous.classes or n != len(previous.predictions) or evaluation.logits is None or previous.logits is None:
        return Similarity(comparable=False)
    kept = min(len(evaluation.logits), len(previous.logits))
    ours, theirs = evaluation.logits[:kept].double().flatten(), previous.logits[:kept].double().flatten()
    return Similarity(
        top1=float((evaluation.predictions == previous.predictions).double().mean()),
        cosine=float(torch.nn.functional.cosine_similarity(ours, theirs, dim=0, eps=1e-12)),
        n=n,
        cosine_n=kept,
    )


class AccuracyTracker:
    """Evaluates every stage of a run on ``data.eval``: the first stage evaluated (the baseline) is
    the reference for agreement and for the accuracy budget.

    Args:
        batches: the eval loader, on ``device``.
        device: where artifacts run.
        max_drop: ``measure.max_accuracy_drop``: the most top-1 may fall below the baseline's, or ``None``.
    """

    def __init__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, max_drop: float | None = None) -> None:
        self.batches, self.device, self.max_drop = batches, device, max_drop
        self.baseline: Evaluation | None = None
        self.previous: Evaluation | None = None

    def evaluate(self, subject: nn.Module | Artifact) -> tuple[Accuracy | None, Agreement, float]:
        """The stage's ``accuracy`` (``None`` without labels), ``agreement`` and the seconds evaluating took.

        After the baseline, ``agreement.previous`` holds :func:`similarity_to` the stage evaluated
        before (what a similarity tolerance is checked on).
        """
        evaluation = evaluate(subject, self.batches, self.device)
        if self.baseline is None:
            self.baseline = evaluation
            if evaluation.nonfinite_inputs:  # once: the data are the same for every stage
                log.warning(
                    "data.eval: %d of %d samples hold NaN or infinite values; their predictions, and the accuracy, mean little",
                    evaluation.nonfinite_inputs,
                    len(evaluation.labels),
                )
        agreement = agreement_with(evaluation, self.baseline)
        if self.previous is not None:
            agreement.previous = similarity_to(evaluation, self.previous)
        self.previous = evaluation
        return evaluation.accuracy(), agreement, evaluation.seconds

    def check_budget(self, accuracy: Accuracy | None) -> None:
        """Fail a stage whose top-1 fell below the baseline's by more than ``max_drop``.

        Raises:
            StageError: with both accuracies, the drop and the budget.
        """
        if self.max_drop is None or self.baseline is None or accuracy is None:
            return
        reference = self.baseline.accuracy()
        if reference is None:
            return
        base, top1, n = reference.top1, accuracy.top1, accuracy.n
        # Compare counts of samples, not rounded shares, so that a drop of exactly the budget passes.
        if round((base - top1) * n) <= self.max_drop * n + 1e-9:
            return
        raise StageError(
            f"top-1 accuracy on data.eval fell from {base:.2%} (baseline) to {top1:.2%}, a drop of "
            f"{(base - top1) * 100:.2f} points, over measure.max_accuracy_drop {self.max_drop:g} "
            f"({self.max_drop * 100:.2f} points); raise it to accept the stage"
        )


def _nonfinite_samples(inputs: ExampleInputs) -> int:
    """Samples of a batch with a NaN or an infinity in any floating input."""
    bad = torch.zeros(inputs.batch_size, dtype=torch.bool)
    for tensor in inputs.tensors:
        if tensor.is_floating_point():
            bad |= (~torch.isfinite(tensor.reshape(len(tensor), -1))).any(1).cpu()
    return int(bad.sum())
