"""Checkpoints into models: safe loading (weights_only), unwrapping, matching, freezing."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optkit.errors import CheckpointError
from optkit.pipeline import ModelSpec, WeightsSpec
from optkit.sources import is_weights_path

if TYPE_CHECKING:
    from torch import nn

__all__ = ["weights_spec_of", "load_weights_into", "apply_freeze"]


def weights_spec_of(spec: ModelSpec) -> WeightsSpec | None:
    """The checkpoint to load into the built model, if ``model.weights`` names one."""
    if isinstance(spec.weights, WeightsSpec):
        return spec.weights
    if isinstance(spec.weights, str) and is_weights_path(spec.weights):
        return WeightsSpec(path=spec.weights, trust_checkpoint=spec.trust_checkpoint)
    return None


def load_weights_into(model: nn.Module, weights: WeightsSpec, base_dir: Path) -> dict[str, Any]:
    """Load ``weights`` into ``model``; returns the account of what was loaded."""
    import torch

    path = Path(weights.path) if Path(weights.path).is_absolute() else base_dir / weights.path
    if not path.is_file():
        raise CheckpointError(f"model.weights: no such checkpoint file: {path}")
    state = torch.load(path, map_location=weights.map_location, weights_only=True)
    result = model.load_state_dict(state, strict=weights.strict)
    return {"path": str(path), "missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


def apply_freeze(model: nn.Module, patterns: list[str]) -> dict[str, Any]:
    """Set ``requires_grad=False`` on parameters whose names match any glob in ``patterns``."""
    frozen = [n for n, p in model.named_parameters() if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return {"patterns": patterns, "frozen_tensors": len(frozen)}
