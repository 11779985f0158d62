"""Deployable artifacts a pass can return instead of a module; each runs under its own runtime."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

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
    def load(self, device: torch.device) -> Callable[..., Any]:
        """A callable that runs the artifact on torch inputs (called as the model is) and returns torch outputs."""

    def io(self, device: torch.device) -> dict[str, Any]:
        """What a call of :meth:`load`'s callable moves on ``device``, as report.json's ``latency_ms.io``
        records it: where ``inputs`` and ``outputs`` live, and ``host_copies`` (whether a call copies
        between host and device). Empty when the artifact does not say."""
        return {}


def onnxruntime_providers(device: torch.device) -> list[str | tuple[str, dict[str, int]]]:
    """onnxruntime execution providers for ``device``: CUDA where asked for and available."""
    import onnxruntime as ort

    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("device is CUDA but this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
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
            output (:func:`optkit.output_leaves` order), in graph order; the runner
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
        # Idle intra-op threads sleep instead of spinning: a spinning pool takes the cores the
        # next contender of a side-by-side timing needs (eager torch beside it ran 1.8x slower).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.path), options, providers=onnxruntime_providers(device))

    def load(self, device: torch.device) -> Callable[..., Any]:
        """A callable that feeds torch tensors to the graph and returns the model's own output
        structure (tensor, tuple or dict) as torch tensors on ``device``.

        Positional tensors feed the graph's inputs in order, keyword tensors the inputs of that
        name (as the model was called: ``call(x)``, ``call(frame1, frame2)``,
        ``call(input_ids=..., attention_mask=...)``). Each is cast to its graph input's type
        (float16 for a half-precision export). A graph exported for a fixed batch size takes a
        batch of any size: it is run in slices of its own size (the last one padded), and the
        outputs are joined along the batch dimension. On the CPU, tensors and numpy arrays share
        memory both ways. On CUDA, IO binding hands onnxruntime the inputs' device memory and
        output tensors allocated by torch on the device: nothing is copied through the host (see :meth:`io`).
        """
        import torch
        import torch.utils._pytree as pytree

        session = self.session(device)
        names = self.output_names or [o.name for o in session.get_outputs()]
        call = _run_bound(session, names, device) if device.type == "cuda" else _run_on_host(session, names)
        graph_inputs = [i.name for i in session.get_inputs()]
        graph_input = session.get_inputs()[0]
        fixed_batch = graph_input.shape[0] if graph_input.shape and isinstance(graph_input.shape[0], int) else None

        def feeds(args: tuple[torch.Tensor, ...], kwargs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            unknown = sorted(set(kwargs) - set(graph_inputs))
            if len(args) > len(graph_inputs) or unknown:
                raise TypeError(
                    f"{self.path.name} takes the inputs {graph_inputs}, called with {len(args)} positional and {sorted(kwargs)}"
                )
            return {**dict(zip(graph_inputs, args, strict=False)), **kwargs}

        def run(*args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
            inputs = feeds(args, kwargs)
            batch = next(iter(inputs.values())).shape[0]
            if fixed_batch is None or batch == fixed_batch:
                tensors = call(inputs)
            else:
                parts = []
                for start in range(0, batch, fixed_batch):
                    part = {name: t[start : start + fixed_batch] for name, t in inputs.items()}
                    padding = fixed_batch - next(iter(part.values())).shape[0]
                    if padding:
                        part = {name: torch.cat([t, t[-1:].expand(padding, *t.shape[1:])]) for name, t in part.items()}
                    parts.append([t[: fixed_batch - padding] for t in call(part)])
                tensors = [torch.cat(pieces) for pieces in zip(*parts, strict=True)]
            if self.output_structure is not None:
                return pytree.tree_unflatten(tensors, self.output_structure)
            return tensors[0] if len(tensors) == 1 else tuple(tensors)

        return run

    def io(self, device: torch.device) -> dict[str, Any]:
        """On CUDA: inputs and outputs in device memory through IO binding, no host copies; on the
        CPU: host memory shared with numpy, no copies."""
        if device.type == "cuda":
            return {"inputs": str(device), "outputs": str(device), "host_copies": False, "io_binding": True}
        return {"inputs": "cpu", "outputs": "cpu", "host_copies": False, "io_binding": False}


#: ONNX tensor types → (torch dtype name, the element type IO binding takes: a numpy type name, or
#: the ONNX TensorProto number where numpy has none).
_ONNX_TYPES: dict[str, tuple[str, str | int]] = {
    "tensor(float)": ("float32", "float32"),
    "tensor(float16)": ("float16", "float16"),
    "tensor(double)": ("float64", "float64"),
    "tensor(bfloat16)": ("bfloat16", 16),
    "tensor(int64)": ("int64", "int64"),
    "tensor(int32)": ("int32", "int32"),
    "tensor(int8)": ("int8", "int8"),
    "tensor(uint8)": ("uint8", "uint8"),
    "tensor(bool)": ("bool", "bool"),
}


def _onnx_type(type_name: str, what: str) -> tuple[Any, Any]:
    """The torch dtype and the IO-binding element type of an ONNX tensor type."""
    import numpy as np
    import torch

    if type_name not in _ONNX_TYPES:
        raise TypeError(f"{what} has ONNX type {type_name}, which optkit cannot bind (known: {', '.join(_ONNX_TYPES)})")
    torch_name, element = _ONNX_TYPES[type_name]
    return getattr(torch, torch_name), (np.dtype(element).type if isinstance(element, str) else element)


def _run_on_host(session: Any, names: list[str]) -> Callable[[dict[str, torch.Tensor]], list[torch.Tensor]]:
    """``session.run`` on numpy views of CPU tensors (each cast to its graph input's type where it names one)."""
    import torch

    input_dtypes = {i.name: _onnx_type(i.type, "")[0] if i.type in _ONNX_TYPES else None for i in session.get_inputs()}

    def call(inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        arrays = {name: x.detach().to("cpu", input_dtypes.get(name)).numpy() for name, x in inputs.items()}
        return [torch.from_numpy(o) for o in session.run(names, arrays)]

    return call


def _run_bound(session: Any, names: list[str], device: torch.device) -> Callable[[dict[str, torch.Tensor]], list[torch.Tensor]]:
    """``run_with_iobinding`` on device memory: the input tensor's, and outputs torch allocates.

    The output shapes for an input shape are learnt on the first call with it (onnxruntime
    allocates the outputs on the device, copied back once); later calls bind fresh torch tensors
    of those shapes, so every call returns new tensors, as a module's forward does.
    """
    import torch

    device_id = device.index or 0  # the device the session's CUDA provider runs on (onnxruntime_providers)
    device = torch.device("cuda", device_id)
    input_types = {i.name: _onnx_type(i.type, f"input {i.name!r}") for i in session.get_inputs()}
    graph_outputs = {o.name: o for o in session.get_outputs()}
    output_types = [_onnx_type(graph_outputs[name].type, f"output {name!r}") for name in names]
    binding = session.io_binding()
    shapes: dict[tuple[tuple[int, ...], ...], list[tuple[int, ...]]] = {}

    def call(inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        bound = {name: x.detach().to(device=device, dtype=input_types[name][0]).contiguous() for name, x in inputs.items()}
        # onnxruntime reads the inputs on its own stream: what torch queued to make them must be done.
        torch.cuda.current_stream(device).synchronize()
        for name, x in bound.items():
            binding.bind_input(name, "cuda", device_id, input_types[name][1], tuple(x.shape), x.data_ptr())
        key = tuple(tuple(x.shape) for x in bound.values())
        known = shapes.get(key)
        if known is None:
            for name in names:
                binding.bind_output(name, "cuda", device_id)
            session.run_with_iobinding(binding)
            arrays = binding.copy_outputs_to_cpu()
            shapes[key] = [tuple(a.shape) for a in arrays]
            return [torch.from_numpy(a).to(device) for a in arrays]
        outputs = [torch.empty(shape, dtype=dtype, device=device) for shape, (dtype, _) in zip(known, output_types, strict=True)]
        for name, tensor, (_, element) in zip(names, outputs, output_types, strict=True):
            binding.bind_output(name, "cuda", device_id, element, tuple(tensor.shape), tensor.data_ptr())
        session.run_with_iobinding(binding)  # returns once the outputs are written (it synchronizes the device)
        binding.synchronize_outputs()
        return outputs

    return call
