"""The models of the pruning and fusion benchmarks, named ``library:name`` (random weights, nothing
downloaded), and the MAC counter every variant is measured with.

- ``torchvision:NAME`` (``torchvision:googlenet`` with its auxiliary heads);
- ``timm:NAME`` (``timm`` is in the ``bench`` and ``dev`` extras);
- ``ultralytics:CFG.yaml``: an Ultralytics detection model built from the yaml it ships. The
  benchmarks import Ultralytics (AGPL-3.0) here, never optkit: run them with the interpreter of
  ``.venv-ultralytics`` for these rows; elsewhere they are reported as not run.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import torch
from torch import nn

from optkit.host.facade import Host
from optkit.measure.flops import count_macs

__all__ = ["build", "example_input", "macs", "needs_missing_library", "randomize_batchnorms", "rules"]

#: Fixed-size models and their input resolution; every other model runs at the benchmark's size.
FIXED_SIZE = {"timm:vit_tiny_patch16_224": 224, "timm:vit_small_patch16_224": 224}

_LIBRARY = {"timm": "timm", "ultralytics": "ultralytics", "torchvision": "torchvision"}
_RULES: Any = None


def needs_missing_library(source: str) -> str | None:
    """Why ``source`` cannot be built here (its library is not installed), or ``None``."""
    library = _LIBRARY.get(source.partition(":")[0])
    if library is None:
        return f"unknown source {source!r} (torchvision:, timm: or ultralytics:)"
    if importlib.util.find_spec(library) is None:
        hint = " (run with .venv-ultralytics/bin/python)" if library == "ultralytics" else ""
        return f"needs {library}, which is not installed here{hint}"
    return None


def build(source: str) -> nn.Module:
    """The model ``source`` names, in eval mode, with seeded random weights."""
    scheme, _, name = source.partition(":")
    torch.manual_seed(0)
    if scheme == "timm":
        import timm

        model = timm.create_model(name, pretrained=False)
    elif scheme == "ultralytics":
        from ultralytics.nn.tasks import DetectionModel

        model = DetectionModel(name, verbose=False)
    else:
        import torchvision

        kwargs = {"aux_logits": True, "init_weights": False} if name == "googlenet" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = torchvision.models.get_model(name, weights=None, **kwargs)
    return randomize_batchnorms(model.eval())


@torch.no_grad()
def randomize_batchnorms(model: nn.Module, seed: int = 1) -> nn.Module:
    """BatchNorm statistics and affine parameters away from the identity, so folding is tested."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
            if m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
    return model


def example_input(source: str, size: int, batch: int = 1) -> torch.Tensor:
    """A seeded input batch for ``source`` (fixed-size models get their own resolution)."""
    side = FIXED_SIZE.get(source, size)
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))


def rules() -> Any:
    """The module rules of the installed plugins, as a pipeline's passes get them."""
    global _RULES
    if _RULES is None:
        _RULES = Host().rule_table()
    return _RULES


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """optkit's count (thop rules + aten counter + module rules), as a run reports it."""
    return count_macs(model, x, rules())["macs"]
