"""The similarity gate without data.eval: float and quantized models compared on a seeded batch of
:data:`GATE_SAMPLES` samples, not on the one seeded measurement sample.

One random sample decides little: a BERT-like model showed cosine 0.9998 and top-1 100% on it, and a
median cosine of 0.77 over 200 other batches. A graph with a dynamic batch takes the samples in one
call; one with a fixed batch size takes them in calls of its size (:meth:`OnnxArtifact.load` slices).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from optkit import ExampleInputs, OnnxArtifact, compare_outputs
from optkit_plugins.quantize_onnx.detections import MATCH_IOU, is_detections, match_detections

__all__ = ["GATE_SAMPLES", "gate_batch", "seeded_similarity", "detection_similarity", "call_by_image"]

#: Samples the gate compares when the pipeline has no data.eval.
GATE_SAMPLES = 32


def gate_batch(example: ExampleInputs, seed: int = 1) -> ExampleInputs:
    """The :data:`GATE_SAMPLES` seeded samples the gate compares on, drawn anew from ``example``'s definitions."""
    return example.resample(torch.Generator().manual_seed(seed), batch=GATE_SAMPLES)


def call_by_image(run: Callable[..., Any], batch: ExampleInputs, fixed_batch: int | None) -> Any:
    """``run`` on ``batch``; a graph with a fixed batch size that returns per-image detections is called slice by
    slice and its lists joined, one dict per image (the artifact would join the slices' tensors into one image).
    Samples beyond the last whole slice are left out."""
    if fixed_batch is None or batch.batch_size <= fixed_batch:
        return batch.call(run)

    def part(start: int) -> Any:
        return batch.map(lambda tensor, _: tensor[start : start + fixed_batch]).call(run)

    first = part(0)
    if not is_detections(first):
        return batch.call(run)
    images = list(first)
    for start in range(fixed_batch, batch.batch_size - fixed_batch + 1, fixed_batch):
        images.extend(part(start))
    return images


def seeded_similarity(
    source: OnnxArtifact, quantized: Path, example: ExampleInputs, device: torch.device, fixed_batch: int | None, seed: int = 1
) -> dict[str, Any]:
    """Cosine and top-1 agreement of ``quantized`` against ``source`` on seeded standard-normal samples.

    Args:
        source: the float ONNX artifact.
        quantized: the quantized file (run like ``source``: same outputs and structure).
        example: the seeded inputs; samples are drawn anew from their definitions (shapes, dtypes, ranges).
        device: where onnxruntime runs.
        fixed_batch: the graph's batch size when it has a fixed one (the samples then take several calls).
        seed: of the samples (another seed than the measurement batch's).

    Returns:
        ``cosine``, ``top1`` (``None`` for outputs that are not ``[batch, classes]`` logits),
        ``samples``, ``calls`` and ``on`` (what was compared, in words); for per-image detections those of
        :func:`detection_similarity` (``detections``, and a ``warning`` when nothing was compared).
    """
    batch = gate_batch(example, seed)
    reference = call_by_image(source.load(device), batch, fixed_batch)
    outputs = call_by_image(dataclasses.replace(source, path=quantized).load(device), batch, fixed_batch)
    calls = 1 if fixed_batch is None else -(-GATE_SAMPLES // fixed_batch)
    gate: dict[str, Any] = {"samples": GATE_SAMPLES, "calls": calls, "on": f"a seeded batch of {GATE_SAMPLES} random samples"}
    if is_detections(reference) and is_detections(outputs) and len(outputs) == len(reference):
        return {**gate, **detection_similarity(outputs, reference)}
    figures = compare_outputs(outputs, reference)
    return {"cosine": figures.cosine, "top1": figures.top1_agreement, **gate}


def detection_similarity(outputs: list[dict[str, torch.Tensor]], reference: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """The gate's figures for per-image detections (:func:`match_detections`): ``top1`` is the share of the float
    model's detections the quantized one finds, ``cosine`` that of the matched boxes and scores, ``detections``
    the counts; ``warning`` when the float model detected nothing (both figures are then 1.0 when the
    quantized one detects nothing either, else 0.0)."""
    matched = match_detections(outputs, reference)
    figures: dict[str, Any] = {
        "cosine": matched["cosine"],
        "top1": matched["agreement"],
        "detections": {
            "reference": matched["reference"],
            "found": matched["found"],
            "extra": matched["extra"],
            "matched_by": f"label and IoU >= {MATCH_IOU:g}, float detections by decreasing score",
            "top1_means": "the share of the float model's detections the quantized model finds",
        },
    }
    if not matched["reference"]:
        agree = 1.0 if not matched["extra"] else 0.0
        figures.update({"cosine": agree, "top1": agree})
        figures["warning"] = (
            f"the float model detected nothing on the gate's {len(reference)} samples, so no detection was compared "
            f"(the quantized model detected {matched['extra']}); give trained weights for a comparison that means something"
        )
    elif matched["cosine"] is None:
        figures["cosine"] = 0.0  # no float detection found: nothing alike
    return figures
