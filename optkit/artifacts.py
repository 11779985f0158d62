"""Deployable artifacts a pass can return instead of a module; each runs under its own runtime."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Artifact", "OnnxArtifact", "onnxruntime_providers"]


class Artifact(ABC):
    """A file that computes what a model computes, measured by the runner under ``runtime``.

    Attributes:
        path: the file.
        source_model: the module it was made from; used for what the runtime cannot report
            (MACs, parameter counts), and carried on to the next stage.
    """

    path: Path
    source_model: nn.Module | None
    runtime: str

    @abstractmethod
    def load(self, device: torch.device) -> Callable[[torch.Tensor], Any]:
        """A callable that runs the artifact on a torch input and returns torch outputs."""


def onnxruntime_providers(device: torch.device) -> list[str]:
    """onnxruntime execution providers for ``device``: CUDA where asked for and available."""
    import onnxruntime as ort

    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "device is CUDA but this onnxruntime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu)"
            )
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class OnnxArtifact(Artifact):
    """An ONNX file, run with onnxruntime (all graph optimizations on).

    Attributes:
        output_names: names of the graph outputs, in order.
        threads: intra-op threads for onnxruntime; ``None`` matches torch's thread count.
    """

    path: Path
    source_model: Any = None
    output_names: list[str] = field(default_factory=list)
    threads: int | None = None
    runtime: str = "onnxruntime"

    def session(self, device: torch.device) -> Any:
        """An ``onnxruntime.InferenceSession`` for ``device``."""
        import onnxruntime as ort
        import torch

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        options.log_severity_level = 3
        return ort.InferenceSession(str(self.path), options, providers=onnxruntime_providers(device))

    def load(self, device: torch.device) -> Callable[[torch.Tensor], Any]:
        import torch

        session = self.session(device)
        input_name = session.get_inputs()[0].name

        def run(x: torch.Tensor) -> Any:
            outputs = session.run(None, {input_name: x.detach().cpu().numpy()})
            tensors = [torch.from_numpy(o) for o in outputs]
            return tensors[0] if len(tensors) == 1 else tuple(tensors)

        return run
