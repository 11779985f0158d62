"""Calibration inputs for static quantization: batches of ``data.calibration``, or random batches
when asked for, fed to onnxruntime's calibrator one graph input at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from optkit import ExampleInputs, StageError
from optkit_plugins.quantize_onnx.graph import GraphInput

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["CalibrationFeed", "data_batches", "random_batches", "fit_batch"]


def data_batches(loader: Iterable[tuple[Any, torch.Tensor]], count: int) -> Iterator[ExampleInputs]:
    """The inputs of the first ``count`` batches of ``loader`` (its ``(inputs, labels)`` pairs; the
    inputs a tensor, a tuple of tensors passed positionally, or a dict of tensors passed by name)."""
    for index, (inputs, _) in enumerate(loader):
        if index >= count:
            return
        yield ExampleInputs.of(inputs)


def random_batches(example: torch.Tensor | ExampleInputs, count: int, seed: int = 0) -> Iterator[ExampleInputs]:
    """``count`` seeded random batches drawn like ``example`` (standard-normal floats, or each input's range)."""
    import torch

    example = ExampleInputs.of(example)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        yield example.resample(generator)


def fit_batch(inputs: dict[str, torch.Tensor], fixed_batch: int | None) -> list[dict[str, torch.Tensor]]:
    """``inputs`` (graph input name → tensor) as batches the graph takes: itself for a graph of any
    batch size, else slices of ``fixed_batch`` (a last, shorter slice is left out: a padded one would skew the ranges)."""
    batch = next(iter(inputs.values())).shape[0]
    if fixed_batch is None or batch == fixed_batch:
        return [inputs]
    starts = range(0, batch - fixed_batch + 1, fixed_batch)
    return [{name: t[start : start + fixed_batch] for name, t in inputs.items()} for start in starts]


class CalibrationFeed:
    """An onnxruntime ``CalibrationDataReader`` (``get_next``, ``__len__``, ``set_range``) over torch batches.

    The batches are read at once into host memory (only the inputs: ``batches × batch_size``
    samples), so that onnxruntime can calibrate one batch at a time (``CalibStridedMinMax``): the
    calibrator then holds one batch's activations, not every batch's.

    Args:
        batches: input batches, as the model takes them: positional tensors feed the graph's
            inputs in order, keyword tensors the input of their name.
        inputs: the graph's inputs (:func:`~optkit_plugins.quantize_onnx.graph.graph_inputs`); each
            array is cast to its input's type.
        fixed_batch: the graph's batch size when it has a fixed one.

    Attributes:
        arrays: the batches (graph input name → array), each of the graph's batch size when it has one.
        samples: the samples in them.

    Raises:
        StageError: a batch does not match the graph's inputs.
    """

    def __init__(
        self, batches: Iterable[torch.Tensor | ExampleInputs], inputs: Sequence[GraphInput], fixed_batch: int | None = None
    ) -> None:
        names = [i.name for i in inputs]
        types = {i.name: i.dtype for i in inputs}
        self.arrays: list[dict[str, np.ndarray]] = []
        for batch in batches:
            feed = _feed(ExampleInputs.of(batch), names)
            for part in fit_batch(feed, fixed_batch):
                self.arrays.append({name: t.detach().cpu().numpy().astype(types[name], copy=False) for name, t in part.items()})
        self.samples = sum(int(next(iter(array.values())).shape[0]) for array in self.arrays)
        self._next, self._end = 0, len(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def nonfinite_samples(self) -> int:
        """The samples holding NaN or an infinity: onnxruntime cannot compute a scale from them."""
        import numpy as np

        count = 0
        for batch in self.arrays:  # a sample counts once, whichever of its inputs holds the value
            bad = np.zeros(int(next(iter(batch.values())).shape[0]), dtype=bool)
            for array in batch.values():
                bad |= (~np.isfinite(array.reshape(array.shape[0], -1))).any(axis=1)
            count += int(bad.sum())
        return count

    def set_range(self, start_index: int, end_index: int) -> None:
        """Give the batches ``start_index:end_index`` next (onnxruntime's strided calibration)."""
        self._next, self._end = start_index, min(end_index, len(self.arrays))

    def get_next(self) -> dict[str, Any] | None:
        """The next ``{input_name: array}``, or ``None`` when the range is spent."""
        if self._next >= self._end:
            return None
        self._next += 1
        return self.arrays[self._next - 1]


def _feed(batch: ExampleInputs, names: list[str]) -> dict[str, torch.Tensor]:
    """Graph input name → tensor: positional tensors in order, keyword ones by name; every input fed."""
    feed = {**dict(zip(names, batch.args, strict=False)), **batch.kwargs}
    if len(batch.args) > len(names) or set(feed) != set(names):
        raise StageError(
            f"quantize_onnx: a calibration batch has {len(batch.args)} positional inputs and {sorted(batch.kwargs)} by name, "
            f"and the graph takes {names}; data.calibration must yield the model's inputs (a tensor, a tuple or a dict of them)"
        )
    return feed
