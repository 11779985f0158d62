"""Deployable artifacts a pass can return instead of a module; each runs under its own runtime."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Artifact", "OnnxArtifact", "onnxruntime_providers"]


class Artifact(ABC):
    """A file that computes what a model computes, measured by the runner under ``runtime``.

    Passes declare the kinds they read and return by class (``Pass.consumes``/``Pass.produces``);
    ``description`` names the kind in messages.

    Attributes:
        path: the file.
        source_model: the module it was made from; used for what the runtime cannot report
            (MACs, parameter counts), and carried on to the next stage.
    """

    description: ClassVar[str] = "an artifact"
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
        output_names: the graph outputs to fetch, in order (all of them when empty).
        threads: intra-op threads for onnxruntime; ``None`` matches torch's thread count.
        output_structure: a ``torch.utils._pytree`` spec that rebuilds the source model's tuple
            or dict from the graph outputs; ``None`` returns one tensor, or a tuple of several.
        output_selection: when the file computes only some of the source model's outputs (a
            selection, a YOLO model's deployment output), their indices in the model's flattened
            output (:func:`optkit.measure.output_leaves` order), in graph order; the runner
            compares the file's drift with those outputs of the stages before. ``None``: all.
    """

    description: ClassVar[str] = "an ONNX model"
    path: Path
    source_model: Any = None
    output_names: list[str] = field(default_factory=list)
    threads: int | None = None
    runtime: str = "onnxruntime"
    output_structure: Any = None
    output_selection: list[int] | None = None

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
        """A callable that feeds a torch tensor to the graph and returns the model's own output
        structure (tensor, tuple or dict) as CPU tensors.

        The input is cast to the graph's input type (float16 for a half-precision export). A graph
        exported for a fixed batch size takes a batch of any size: it is run in slices of its own
        size (the last one padded), and the outputs are joined along the batch dimension.
        """
        import numpy as np
        import torch
        import torch.utils._pytree as pytree

        session = self.session(device)
        graph_input = session.get_inputs()[0]
        input_dtype = np.float16 if graph_input.type == "tensor(float16)" else None
        fixed_batch = graph_input.shape[0] if graph_input.shape and isinstance(graph_input.shape[0], int) else None

        def run_slice(x: torch.Tensor) -> list[torch.Tensor]:
            array = x.detach().cpu().numpy()
            if input_dtype is not None:
                array = array.astype(input_dtype)
            return [torch.from_numpy(o) for o in session.run(self.output_names or None, {graph_input.name: array})]

        def run(x: torch.Tensor) -> Any:
            if fixed_batch is None or x.shape[0] == fixed_batch:
                tensors = run_slice(x)
            else:
                parts = []
                for part in x.split(fixed_batch):
                    padding = fixed_batch - part.shape[0]
                    if padding:
                        part = torch.cat([part, part[-1:].expand(padding, *part.shape[1:])])
                    parts.append([t[: fixed_batch - padding] for t in run_slice(part)])
                tensors = [torch.cat(pieces) for pieces in zip(*parts)]
            if self.output_structure is not None:
                return pytree.tree_unflatten(tensors, self.output_structure)
            return tensors[0] if len(tensors) == 1 else tuple(tensors)

        return run
