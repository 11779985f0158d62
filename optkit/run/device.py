"""Device selection (YOLOv5's ``select_device``, strict): never a silent CPU run."""

from __future__ import annotations

import re

import torch

from optkit.errors import PipelineError

__all__ = ["select_device", "device_name"]

_CUDA = re.compile(r"^(?:cuda)?:?(\d+)$")


def select_device(request: str | int | None = "auto") -> torch.device:
    """Turn ``auto | cpu | cuda | cuda:N | N`` into a :class:`torch.device`.

    Args:
        request: ``auto`` takes CUDA device 0 when there is one, else the CPU.

    Raises:
        PipelineError: an unknown spelling, or CUDA asked for where there is none or not that many.

    Example:
        >>> select_device("cpu")
        device(type='cpu')
    """
    text = "auto" if request is None else str(request).strip().lower()
    if text == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda":
        index = 0
    else:
        match = _CUDA.match(text)
        if match is None:
            raise PipelineError(f"device {request!r}: expected auto, cpu, cuda, cuda:N or N")
        index = int(match.group(1))
    if not torch.cuda.is_available():
        raise PipelineError(
            f"device {request!r}: CUDA is not available here (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); use device: cpu or auto"
        )
    count = torch.cuda.device_count()
    if index >= count:
        raise PipelineError(f"device {request!r}: only {count} CUDA device(s) here (0..{count - 1})")
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    """A person-readable device name: ``cpu`` or the GPU's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
