"""Calibration inputs for static quantization: batches of ``data.calibration``, or random batches
when asked for, fed to onnxruntime's calibrator one graph input at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["CalibrationFeed", "data_batches", "random_batches", "fit_batch"]


def data_batches(loader: Iterable[tuple[torch.Tensor, torch.Tensor]], count: int) -> Iterator[torch.Tensor]:
    """The inputs of the first ``count`` batches of ``loader`` (its ``(inputs, labels)`` pairs)."""
    for index, (inputs, _) in enumerate(loader):
        if index >= count:
            return
        yield inputs


def random_batches(shape: list[int], count: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """``count`` batches of standard-normal values of ``shape`` (the seeded batch's distribution), seeded."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        yield torch.randn(*shape, generator=generator)


def fit_batch(inputs: torch.Tensor, fixed_batch: int | None) -> list[torch.Tensor]:
    """``inputs`` as batches the graph takes: itself for a graph of any batch size, else slices of
    ``fixed_batch`` (a last, shorter slice is left out: a padded one would skew the ranges)."""
    if fixed_batch is None or inputs.shape[0] == fixed_batch:
        return [inputs]
    return [part for part in inputs.split(fixed_batch) if part.shape[0] == fixed_batch]


class CalibrationFeed:
    """An onnxruntime ``CalibrationDataReader`` (``get_next``, ``__len__``, ``set_range``) over torch batches.

    The batches are read at once into host memory (only the inputs: ``batches × batch_size``
    samples), so that onnxruntime can calibrate one batch at a time (``CalibStridedMinMax``): the
    calibrator then holds one batch's activations, not every batch's.

    Args:
        batches: input batches, as the model takes them.
        input_name: the graph input they feed.
        fixed_batch: the graph's batch size when it has a fixed one.

    Attributes:
        arrays: the batches, each of the graph's batch size when it has one.
        samples: the samples in them.
    """

    def __init__(self, batches: Iterable[torch.Tensor], input_name: str, fixed_batch: int | None = None) -> None:
        self.input_name = input_name
        self.arrays: list[np.ndarray] = [
            part.numpy() for inputs in batches for part in fit_batch(inputs.detach().cpu().float(), fixed_batch)
        ]
        self.samples = sum(int(array.shape[0]) for array in self.arrays)
        self._next, self._end = 0, len(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def nonfinite_samples(self) -> int:
        """The samples holding NaN or an infinity: onnxruntime cannot compute a scale from them."""
        import numpy as np

        return sum(int((~np.isfinite(array.reshape(array.shape[0], -1))).any(axis=1).sum()) for array in self.arrays)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Give the batches ``start_index:end_index`` next (onnxruntime's strided calibration)."""
        self._next, self._end = start_index, min(end_index, len(self.arrays))

    def get_next(self) -> dict[str, Any] | None:
        """The next ``{input_name: array}``, or ``None`` when the range is spent."""
        if self._next >= self._end:
            return None
        self._next += 1
        return {self.input_name: self.arrays[self._next - 1]}
