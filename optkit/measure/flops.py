"""MACs through thop, profiled on a copy so the measured model is left exactly as it was."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

__all__ = ["count_macs"]

log = logging.getLogger(__name__)


def count_macs(model: nn.Module, inputs: torch.Tensor) -> dict[str, Any]:
    """Multiply-accumulates of one forward pass on ``inputs`` (thop's unit).

    Returns:
        ``macs``, ``gmacs``, ``gflops`` (= 2 × GMACs) and ``uncounted`` (leaf module types
        thop has no rule for and that hold parameters, so their cost is missing).
    """
    from thop import profile

    probe = copy.deepcopy(model).eval()
    with torch.inference_mode():
        macs, _ = profile(probe, inputs=(inputs,), verbose=False)
    macs = int(macs)
    return {"macs": macs, "gmacs": macs / 1e9, "gflops": 2 * macs / 1e9, "unit": "MACs (GFLOPs = 2 x GMACs)"}
