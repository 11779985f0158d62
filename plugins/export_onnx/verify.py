"""Proving an ONNX file computes what its module computes: ``onnx.checker``, then onnxruntime
against PyTorch on several seeded inputs (batch sizes 1, 2, 8 when the batch is dynamic).

Differences are measured with the host's drift helpers, output tensor by output tensor (and by
channel group for YOLO predictions), so a tolerance means here what it means for every stage:
``max|Δ| <= atol + rtol * max|that reference|``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from optkit import ChannelGroup, ExampleInputs, StageError, compare_outputs, drift_exceeds, output_excesses

__all__ = ["check_onnx_file", "parity_inputs", "measure_parity", "parity_by_output", "parity_failure"]

log = logging.getLogger(__name__)


def check_onnx_file(path: Path) -> None:
    """Run ``onnx.checker`` with shape inference on the file (external data included).

    Raises:
        StageError: the model is not valid ONNX, with the checker's reason.
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise StageError(f"export_onnx: {path.name} fails onnx.checker: {error}") from error


def parity_inputs(
    example: torch.Tensor | ExampleInputs, batch_sizes: list[int], dynamic_batch: bool, seed: int = 20260
) -> dict[str, ExampleInputs]:
    """The inputs the ONNX file is checked on, by label.

    Args:
        example: the pipeline's seeded batch, or all the model's inputs (always included, as ``example``).
        batch_sizes: batch sizes to check when the batch is dynamic.
        dynamic_batch: whether the graph takes any batch size; if not, two more random batches
            of the example's shape are used.
        seed: seed of the random inputs (drawn like the example batch: standard normal, or each
            input's range; a seed of its own so that ``batch_1`` is not the example again).

    Returns:
        ``{"example": ..., "batch_1": ..., "batch_2": ..., "batch_8": ...}`` (or ``random_1``,
        ``random_2``), and for integer inputs with a sequence dimension ``sequence_N`` (half the
        example's length), on the example's devices and dtypes.
    """
    example = ExampleInputs.of(example)
    generator = torch.Generator().manual_seed(seed)
    batches = {f"batch_{b}": b for b in batch_sizes} if dynamic_batch else {f"random_{i}": None for i in (1, 2)}
    inputs = {"example": example}
    for label, batch in batches.items():
        inputs[label] = example.resample(generator, batch)
    sequences = {int(t.shape[1]) for t, d in zip(example.tensors, example.defs, strict=False) if d.has_sequence}
    if dynamic_batch and len(sequences) == 1:  # the symbolic sequence, checked at another length
        length = max(1, sequences.pop() // 2)
        inputs[f"sequence_{length}"] = example.resample(generator, sequence=length)
    return inputs


@dataclass
class Parity:
    """onnxruntime against PyTorch on one input.

    Attributes:
        drift: :func:`optkit.compare_outputs` of the onnxruntime outputs with PyTorch's.
        batch: the batch size of the input.
    """

    drift: Any  # optkit's DriftComparison, a report model optkit does not export by name
    batch: int

    def as_details(self) -> dict[str, Any]:
        """The figures as ``details.parity.inputs`` holds them (JSON; the top-1 agreement left out)."""
        figures: dict[str, Any] = self.drift.model_dump(exclude={"top1_agreement"})
        figures["batch"] = self.batch
        if self.drift.comparable:
            scale = self.drift.reference_max_abs
            figures["max_rel"] = self.drift.max_abs / scale if scale else 0.0
        return figures


def measure_parity(
    model: nn.Module,
    run: Callable[..., Any],
    inputs: dict[str, ExampleInputs],
    groups: Mapping[str, Sequence[ChannelGroup]] | None = None,
    score_ties: float = 1e-4,
) -> dict[str, Parity]:
    """Compare ``run`` (onnxruntime) with ``model`` (PyTorch) on each input.

    Args:
        model: the exported module.
        run: the ONNX file under onnxruntime.
        inputs: labelled input batches (see :func:`parity_inputs`).
        groups: channel groups compared on their own, per output name.
        score_ties: per-image detections whose scores are closer than this share of the largest
            are not compared (see :func:`optkit.compare_outputs`).

    Returns:
        Per label, the comparison (see :func:`optkit.compare_outputs`) and the batch size.
    """
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFailure

    figures: dict[str, Parity] = {}
    for label, x in inputs.items():
        with torch.inference_mode():
            reference = x.call(model)
        try:
            outputs = x.call(run)
        except OrtFailure as error:
            message = str(error).splitlines()[0][:400]
            raise StageError(f"export_onnx: onnxruntime fails on input {label} (batch {x.batch_size}): {message}") from error
        figures[label] = Parity(compare_outputs(outputs, reference, groups=groups, score_ties=score_ties), x.batch_size)
        log.debug("ONNX parity on %s: %s", label, figures[label])
    return figures


def parity_by_output(figures: dict[str, Parity], atol: float, rtol: float) -> list[dict[str, Any]]:
    """The worst figures of each output tensor (and channel group) over every input, with its
    ``allowed`` difference and ``excess`` (max|Δ| / allowed: above 1 fails), for the report."""
    rows: dict[str, dict[str, Any]] = {}
    for label, parity in figures.items():
        for name, part, excess in output_excesses(parity.drift, atol, rtol) if parity.drift.outputs else ():
            if name not in rows or excess > rows[name]["excess"]:
                rows[name] = {
                    "output": name,
                    "worst_input": label,
                    "max_abs": part.max_abs,
                    "reference_max_abs": part.reference_max_abs,
                    "allowed": atol + rtol * (part.reference_max_abs or 0.0),  # set for every compared output
                    "excess": excess,
                    "cosine": part.cosine,
                }
    return list(rows.values())


def parity_failure(figures: dict[str, Parity], atol: float, rtol: float) -> str | None:
    """Why the parity ``figures`` break the tolerance (the worst output and input named), or ``None``."""
    for label, parity in figures.items():
        if not parity.drift.comparable:
            shapes, reference_shapes = (
                None if s is None else [tuple(shape) for shape in s] for s in (parity.drift.shapes, parity.drift.reference_shapes)
            )
            return f"onnxruntime outputs have shapes {shapes} where PyTorch gives {reference_shapes} (input {label}, batch {parity.batch})"
    label, worst = max(figures.items(), key=lambda item: max(excess for *_, excess in output_excesses(item[1].drift, atol, rtol)))
    problem = drift_exceeds(worst.drift, atol, rtol)
    if problem is None:
        return None
    return f"onnxruntime differs from PyTorch on input {label} (batch {worst.batch}): {problem}"
