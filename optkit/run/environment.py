"""The environment header of every report: versions, device, threads."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

__all__ = ["environment"]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: Any = None) -> dict[str, Any]:
    """Versions, platform, the CPU (model name and instruction sets), device name and thread count (torch is imported)."""
    import torch

    from optkit.measure.cpu import cpu_info
    from optkit.run.device import device_name

    cpu = cpu_info()

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": cpu.name,
        "cpu": cpu.as_dict(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "thop": _version("thop"),
        "cuda": torch.version.cuda,
        "device": device_name(device) if device is not None else None,
        "device_type": getattr(device, "type", None),
        "threads": torch.get_num_threads(),
    }
