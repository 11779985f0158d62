"""Weights into an architecture: read safely, unwrap, clean, pair, load, and account for it all.

This is the ``model.weights`` step of loading a model. The account it returns becomes the
``weights`` entry of the baseline stage's ``details`` in report.json: the file and the devices
its tensors were saved on, the entry unwrapped, the prefixes stripped, leftovers dropped or
folded, and how many tensors were loaded, missing, unexpected or shape-mismatched (their names
too with ``list_keys``/``--verbose``). A load that fills less than ``min_loaded`` of the model's
tensors fails, because a "successful" load that filled nothing is the commonest silent failure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optkit.config.pipeline import ModelSpec, WeightsSpec
from optkit.errors import CheckpointError
from optkit.files import resolve_path
from optkit.models.checkpoint_files import read_checkpoint
from optkit.models.key_matching import KeyPairing, match_by_name, match_by_order
from optkit.models.sources import is_weights_path
from optkit.models.state_dicts import (
    drop_profiler_counters,
    find_state_dict,
    fold_pruning_masks,
    module_versions,
    strip_wrapper_prefixes,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = ["weights_spec_of", "load_weights_into"]

log = logging.getLogger(__name__)

_EXAMPLES = 3  # names quoted per category in error messages


def weights_spec_of(spec: ModelSpec) -> WeightsSpec | None:
    """The checkpoint to load into the built model, if ``model.weights`` names one.

    A model-level ``trust_checkpoint`` (or ``--trust-checkpoint``) applies to the weights too.
    """
    if isinstance(spec.weights, WeightsSpec):
        weights = spec.weights
    elif isinstance(spec.weights, str) and is_weights_path(spec.weights):
        weights = WeightsSpec(path=spec.weights)
    else:
        return None
    if spec.trust_checkpoint and not weights.trust_checkpoint:
        weights = weights.model_copy(update={"trust_checkpoint": True})
    return weights


def load_weights_into(model: nn.Module, weights: WeightsSpec, base_dir: Path, list_keys: bool = False) -> dict[str, Any]:
    """Load the checkpoint ``weights`` names into ``model`` (in place).

    Args:
        model: the built architecture.
        weights: the validated ``model.weights`` section.
        base_dir: relative paths resolve against it (the pipeline file's folder).
        list_keys: put the names of loaded, missing, unexpected and mismatched tensors in the
            account, not only their counts.

    Returns:
        The account of the load (see the module docstring).

    Raises:
        CheckpointError: unreadable or unsafe file, no weights in it, ``strict`` and not every
            tensor paired, or less than ``min_loaded`` of the model's tensors filled.
    """
    path = resolve_path(weights.path, base_dir)
    checkpoint = read_checkpoint(path, map_location=weights.map_location, trust=weights.trust_checkpoint)
    state, unwrapped = find_state_dict(checkpoint.obj, weights.key)
    model_state = model.state_dict()
    model_keys = set(model_state)
    state, stripped = strip_wrapper_prefixes(state, model_keys)
    state, dropped = drop_profiler_counters(state, model_keys)
    state, folded = fold_pruning_masks(state, model_keys)
    match = match_by_order if weights.match == "order" else match_by_name
    pairing = match(state, model_state, weights.exclude)
    counters = _counters_torch_fills(model, pairing, module_versions(state))

    account = checkpoint.account()
    account["map_location"] = weights.map_location
    account["unwrapped"] = "/".join(unwrapped) or None
    if stripped:
        account["prefixes_stripped"] = stripped
    if dropped:
        account["thop_counters_dropped"] = len(dropped)
    if folded:
        account["pruning_masks_folded"] = len(folded)
    account["match"] = weights.match
    if weights.exclude:
        account["exclude"] = list(weights.exclude)
    filled = len(pairing.pairs) / len(model_state) if model_state else 1.0
    account["tensors"] = {
        "model": len(model_state),
        "checkpoint": len(state),
        "loaded": len(pairing.pairs),
        "missing": len(pairing.missing),
        "unexpected": len(pairing.unexpected),
        "shape_mismatched": len(pairing.mismatched),
        "excluded": len(pairing.excluded),
    }
    if counters:
        account["tensors"]["bn_counters_reset"] = len(counters)
    account["filled"] = round(filled, 4)
    if list_keys:
        account["keys"] = _key_names(pairing, weights.match)

    if weights.strict and not pairing.complete:
        raise CheckpointError(
            f"model.weights: {path.name}: strict is set but not every tensor was paired: {_summary(pairing)}; "
            "set strict: false (with exclude: for the parts you replace) to load what matches"
        )
    if filled < weights.min_loaded:
        hint = "" if weights.match == "order" else "; if the modules were renamed but keep their layout, try match: order"
        raise CheckpointError(
            f"model.weights: {path.name} filled {len(pairing.pairs)} of the model's {len(model_state)} tensors "
            f"({filled:.0%}), less than min_loaded {weights.min_loaded:.0%}: {_summary(pairing)}. Is it a checkpoint "
            f"for another architecture? Lower model.weights.min_loaded to accept a partial load{hint}"
        )
    selected = {model_key: state[checkpoint_key] for model_key, checkpoint_key in pairing.pairs.items()}
    model.load_state_dict(selected, strict=False)
    log.info("%s: loaded %d of %d tensors (%.0f%%)", path, len(selected), len(model_state), 100 * filled)
    return account


def _counters_torch_fills(model: nn.Module, pairing: KeyPairing, versions: dict[str, int | None] | None) -> list[str]:
    """Take out of ``pairing.missing`` the BatchNorm ``num_batches_tracked`` counters that the
    checkpoint rightly lacks, and return them.

    BatchNorm before version 2 (PyTorch < 0.4.1) had no counter: for a layer whose running
    statistics were loaded from a checkpoint whose metadata says so, or that carries no metadata
    at all, the counter is reset, exactly as ``load_state_dict(strict=True)`` does. It is not
    missing, and ``strict`` accepts it.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    old = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, _BatchNorm) and module.track_running_stats and f"{prefix}running_mean" in pairing.pairs:
            version = None if versions is None else versions.get(name)
            if version is None or version < 2:
                old.add(f"{prefix}num_batches_tracked")
    counters = [key for key in pairing.missing if key in old]
    pairing.missing[:] = [key for key in pairing.missing if key not in old]
    return counters


def _summary(pairing: KeyPairing) -> str:
    """'12 loaded, 3 missing (e.g. a, b, c), ...' for error messages."""
    parts = [f"{len(pairing.pairs)} loaded"]
    for label, names in (
        ("missing", pairing.missing),
        ("unexpected", pairing.unexpected),
        ("shape-mismatched", [str(m) for m in pairing.mismatched]),
    ):
        if names:
            more = ", ..." if len(names) > _EXAMPLES else ""
            parts.append(f"{len(names)} {label} (e.g. {', '.join(names[:_EXAMPLES])}{more})")
    if pairing.excluded:
        parts.append(f"{len(pairing.excluded)} excluded")
    return ", ".join(parts)


def _key_names(pairing: KeyPairing, match: str) -> dict[str, list[str]]:
    loaded = [key if key == source or match == "name" else f"{source} -> {key}" for key, source in pairing.pairs.items()]
    return {
        "loaded": loaded,
        "missing": pairing.missing,
        "unexpected": pairing.unexpected,
        "shape_mismatched": [str(m) for m in pairing.mismatched],
        "excluded": pairing.excluded,
    }
