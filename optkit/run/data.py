"""A run's data, made ready before anything runs: the ``data:`` section loaded and checked against
the model, the loaders passes read, and the evaluator of every stage's accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from optkit.data.checks import check_labels_fit, check_sample_shapes
from optkit.inputs import ExampleInputs
from optkit.measure.accuracy import AccuracyTracker, classifier_outputs
from optkit.models.layers import eval_mode

if TYPE_CHECKING:
    from optkit.config.data import DataSpec
    from optkit.host.facade import Host
    from optkit.passes import PassData

__all__ = ["RunData", "prepare_data"]


@dataclass
class RunData:
    """What a run needs of its data.

    Attributes:
        loaders: ``ctx.data`` of every stage (``None`` without a ``data:`` section).
        accuracy: evaluates every stage on ``data.eval`` (``None`` when accuracy is not measured).
        details: what the baseline stage's ``details.data`` says (sources, samples, classes).
    """

    loaders: PassData | None = None
    accuracy: AccuracyTracker | None = None
    details: dict[str, Any] = field(default_factory=dict)


def prepare_data(
    spec: DataSpec | None,
    host: Host,
    model: nn.Module,
    inputs: torch.Tensor | ExampleInputs,
    device: torch.device,
    *,
    base_dir: Path,
    seed: int = 0,
    accuracy: bool = False,
    max_accuracy_drop: float | None = None,
) -> RunData:
    """Load the data sets of ``spec`` and check them against ``model`` (before anything runs).

    Args:
        spec: the ``data:`` section, or ``None``.
        host: finds the dataset loader of each scheme.
        model: the baseline model, on ``device``.
        inputs: the example batch (``model.input_shape``), or the model's several inputs (``model.inputs``).
        device: where the loaders deliver batches.
        base_dir: relative dataset paths resolve against it.
        seed: seeds ``limit`` subsets and shuffling.
        accuracy: evaluate every stage on ``data.eval``.
        max_accuracy_drop: the accuracy budget (``measure.max_accuracy_drop``).

    Raises:
        PipelineError: missing or empty folders, unreadable images, samples of the wrong shape,
            labels that do not fit the model's outputs, a model without classifier outputs.
    """
    if spec is None:
        return RunData()
    data = host.load_data(spec, base_dir, seed=seed)
    inputs = ExampleInputs.of(inputs)
    if inputs.single:  # a data set of several inputs yields tuples or dicts, which the model call checks
        check_sample_shapes(data, list(inputs.first.shape))
    loaders = data.on_device(device)
    tracker = None
    eval_set = data.get("eval")
    if accuracy and eval_set is not None:
        with eval_mode(model), torch.inference_mode():
            logits = classifier_outputs(inputs.call(model), f"data.eval ({eval_set.spec.source})")
        check_labels_fit(eval_set, logits.shape[1])
        tracker = AccuracyTracker(loaders.eval, device, max_accuracy_drop)  # type: ignore[arg-type]
    return RunData(loaders, tracker, data.details())
