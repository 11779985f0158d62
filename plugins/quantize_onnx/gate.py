"""The similarity gate without data.eval: float and quantized models compared on a seeded batch of
:data:`GATE_SAMPLES` samples, not on the one seeded measurement sample.

One random sample decides little: a BERT-like model showed cosine 0.9998 and top-1 100% on it, and a
median cosine of 0.77 over 200 other batches. A graph with a dynamic batch takes the samples in one
call; one with a fixed batch size takes them in calls of its size (:meth:`OnnxArtifact.load` slices).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from optkit import ExampleInputs, OnnxArtifact, compare_outputs

__all__ = ["GATE_SAMPLES", "gate_batch", "seeded_similarity"]

#: Samples the gate compares when the pipeline has no data.eval.
GATE_SAMPLES = 32


def gate_batch(example: ExampleInputs, seed: int = 1) -> ExampleInputs:
    """The :data:`GATE_SAMPLES` seeded samples the gate compares on, drawn anew from ``example``'s definitions."""
    return example.resample(torch.Generator().manual_seed(seed), batch=GATE_SAMPLES)


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
        ``samples``, ``calls`` and ``on`` (what was compared, in words).
    """
    batch = gate_batch(example, seed)
    reference = batch.call(source.load(device))
    outputs = batch.call(dataclasses.replace(source, path=quantized).load(device))
    figures = compare_outputs(outputs, reference)
    calls = 1 if fixed_batch is None else -(-GATE_SAMPLES // fixed_batch)
    return {
        "cosine": figures.cosine,
        "top1": figures.top1_agreement,
        "samples": GATE_SAMPLES,
        "calls": calls,
        "on": f"a seeded batch of {GATE_SAMPLES} random samples",
    }
