"""Checks that the data fit the model, made before anything runs: sample shape and label count."""

from __future__ import annotations

from typing import TYPE_CHECKING

from optkit.errors import PipelineError

if TYPE_CHECKING:
    from optkit.data.loaders import DataSet, PipelineData

__all__ = ["check_sample_shapes", "check_labels_fit"]


def check_sample_shapes(data: PipelineData, input_shape: list[int]) -> None:
    """Every data set's samples must have the shape of one sample of ``model.input_shape``.

    Raises:
        PipelineError: naming the entry, both shapes and the ``data.transform`` keys that fix it.
    """
    expected = list(input_shape[1:])
    for data_set in data.sets.values():
        shape = list(data_set.first_sample()[0].shape)
        if shape == expected:
            continue
        message = (
            f"{data_set.option} ({data_set.spec.source}): samples have shape {shape}, but model.input_shape "
            f"{list(input_shape)} takes samples of shape {expected}"
        )
        if len(shape) == len(expected) == 3 and shape[1:] != expected[1:]:
            message += f"; resize or crop them with data.transform (e.g. {{resize: {expected[1]}, center_crop: {expected[1]}}})"
        elif len(shape) == len(expected) == 3:
            message += f"; the channels differ ({shape[0]} against {expected[0]})"
        raise PipelineError(message)


def check_labels_fit(data_set: DataSet, num_outputs: int) -> None:
    """A data set that reports its classes must have exactly as many as the model has outputs.

    Labels are output indices: an ImageFolder numbers its sorted class folders 0, 1, ...; with
    fewer or more folders than outputs the numbers would not mean the model's classes.

    Raises:
        PipelineError: naming both counts.
    """
    if data_set.classes is None or len(data_set.classes) == num_outputs:
        return
    raise PipelineError(
        f"{data_set.option} ({data_set.spec.source}): {len(data_set.classes)} classes, but the model has {num_outputs} "
        f"outputs; labels are output indices (an image folder numbers its sorted class folders 0, 1, ...), "
        f"so the data set needs one class per output"
    )
