"""A latency target's cost: a candidate's latency over the model's before, timed side by side on a runtime.

``torch``: the modules themselves (eval mode). ``onnxruntime``: each model is exported as the
``export_onnx`` pass exports it by default (``exporter: auto``, symbolic batch, checked and loaded
in onnxruntime), written to a temporary folder and run as :class:`optkit.OnnxArtifact` runs it
(all graph optimizations, torch's thread count). The model before is exported once; every
candidate is timed against it round by round (:func:`optkit.time_callable` with ``against``), so
load on a shared machine falls on both alike and the ratio has an interval.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optkit import OnnxArtifact, time_callable
from optkit_plugins.export_onnx.exporter import export_onnx_model, output_layout, save_onnx_model
from optkit_plugins.prune_channels.search import Ratio

__all__ = ["RUNTIMES", "LatencyRatio"]

#: Where a latency target is measured.
RUNTIMES = ("torch", "onnxruntime")

#: Untimed rounds, then timed rounds (each calls the candidate and the model before once).
WARMUP, ROUNDS = 5, 30


class LatencyRatio:
    """``ratio(pruned)``: ``pruned``'s latency over ``baseline``'s on ``runtime``, timed side by side.

    Use it as a context manager: the ONNX files live in a temporary folder until it is left.
    :attr:`last` holds the figures of the latest timing (for the stage's details).
    """

    def __init__(self, baseline: nn.Module, inputs: torch.Tensor, device: torch.device, runtime: str, rounds: int = ROUNDS):
        self.inputs, self.device, self.runtime, self.rounds = inputs, device, runtime, rounds
        self._folder = tempfile.TemporaryDirectory(prefix="optkit-prune-latency-")
        self.exports: list[float] = []
        self.last: dict[str, Any] = {}
        self._baseline = self._callable(baseline, "baseline")

    def __enter__(self) -> LatencyRatio:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._baseline = None  # type: ignore[assignment]  # the session reads its file no more
        self._folder.cleanup()

    def _callable(self, model: nn.Module, name: str) -> Callable[..., Any]:
        """What is timed for ``model``: the module, or its ONNX export under onnxruntime."""
        model = model.eval()
        if self.runtime == "torch":
            return model
        start = time.perf_counter()
        with torch.inference_mode():
            layout = output_layout(model(self.inputs))
        exported = export_onnx_model(model, self.inputs, layout)
        path = Path(self._folder.name) / f"{name}.onnx"
        save_onnx_model(exported.model, path)
        self.exports.append(time.perf_counter() - start)
        return OnnxArtifact(path=path, output_names=layout.names, output_structure=layout.structure).load(self.device)

    def __call__(self, pruned: nn.Module) -> Ratio:
        record = time_callable(self._callable(pruned, "candidate"), self.inputs, self.device, WARMUP, self.rounds, against=self._baseline)
        speedup = record["speedup"]
        ratio = Ratio(1 / speedup["value"], 1 / speedup["high"], 1 / speedup["low"])
        statistical = speedup["statistical"]
        self.last = {
            "runtime": self.runtime,
            "pruned_ms": round(record["p50"], 4),
            "baseline_ms": round(record["against"]["p50"], 4),
            "ratio": round(ratio.value, 6),
            "interval": [round(ratio.low or 0.0, 6), round(ratio.high or 0.0, 6)],
            "statistical_interval": [round(1 / statistical["high"], 6), round(1 / statistical["low"], 6)],
            "confidence": round(speedup["confidence"], 4),
            "margin": speedup["margin"],
            "rounds": record["n"],
            "warmup": WARMUP,
            "threads": record["threads"],
            "order": "side by side: each round calls the pruned model and the model before once, in a seeded shuffled order",
        }
        return ratio
