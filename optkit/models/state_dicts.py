"""From what a checkpoint holds to a clean state dict: unwrapping, prefixes and leftovers.

Checkpoints rarely hold a bare state dict. Training scripts wrap it (``{'model': ..., 'ema': ...}``
in YOLOv5, ``state_dict`` in Lightning, ``model_state_dict`` in the PyTorch tutorials), save
the whole module, or save it from ``DataParallel``/DDP (``module.`` on every key) or from
``torch.compile`` (``_orig_mod.``). Profilers and pruning leave tensors behind: thop's
``total_ops``/``total_params`` buffers, ``torch.nn.utils.prune``'s ``weight_orig``/``weight_mask``.
Each function here undoes one of these and says what it did, and keeps the state dict's
``_metadata`` (each module's version, which tells BatchNorm whether ``num_batches_tracked`` is
expected) with its keys renamed alongside.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from optkit.errors import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = [
    "WRAPPER_KEYS",
    "WRAPPER_PREFIXES",
    "PROFILER_COUNTERS",
    "StateDict",
    "find_state_dict",
    "strip_wrapper_prefixes",
    "drop_profiler_counters",
    "fold_pruning_masks",
    "module_versions",
]

log = logging.getLogger(__name__)

StateDict = dict[str, "torch.Tensor"]

#: Entries that hold the weights in wrapped checkpoints, in the order they are preferred when
#: ``key`` is not given (YOLOv5 prefers the EMA weights, as its ``attempt_load`` does).
WRAPPER_KEYS = ("ema", "model", "state_dict", "model_state_dict")

#: Prefixes that wrappers add to every key: DataParallel/DDP, and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

#: Buffers that thop's ``profile`` adds to every module it counts.
PROFILER_COUNTERS = ("total_ops", "total_params")


def find_state_dict(obj: Any, key: str | None = None, option: str = "model.weights") -> tuple[StateDict, list[str]]:
    """The state dict inside a checkpoint object.

    Args:
        obj: what the file held: a state dict, a whole ``nn.Module``, or a mapping that wraps
            either under one of :data:`WRAPPER_KEYS` (nested wrappers are unwrapped too).
        key: the entry to take; by default the first of :data:`WRAPPER_KEYS` that holds weights.
        option: the pipeline option, named in errors.

    Returns:
        ``(state_dict, path)``: the tensors by name, and the entries unwrapped to reach them
        (``["ema"]``; ``["<module>"]`` for a whole module; empty for a bare state dict).

    Raises:
        CheckpointError: ``key`` is not in the checkpoint, or nothing in it holds tensors.
    """
    from torch import nn

    path: list[str] = []
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise CheckpointError(f"{option}.key: the checkpoint has no entry {key!r}; {_describe_entries(obj)}")
        obj, path = obj[key], [key]
    while True:
        if isinstance(obj, nn.Module):
            state = obj.state_dict()
            return _like(state, state.items()), [*path, "<module>"]
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{option}: {'/'.join(path) or 'the checkpoint'} holds a {type(obj).__name__}, not weights")
        if _is_state_dict(obj):
            return _like(obj, obj.items()), path
        wrapper = next((k for k in WRAPPER_KEYS if obj.get(k) is not None), None)
        if wrapper is None:
            raise CheckpointError(
                f"{option}: found no weights in the checkpoint: {_describe_entries(obj)}; name the entry that holds them with key:"
            )
        others = [k for k in WRAPPER_KEYS if k != wrapper and obj.get(k) is not None]
        if others:
            log.info("%s: using %r; the checkpoint also holds %s (choose with key:)", option, wrapper, others)
        obj, path = obj[wrapper], [*path, wrapper]


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    import torch

    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _describe_entries(obj: Any, limit: int = 8) -> str:
    if not isinstance(obj, Mapping):
        return f"it holds a {type(obj).__name__}"
    entries = [f"{k} ({type(v).__name__})" for k, v in list(obj.items())[:limit]]
    more = f", ... ({len(obj)} in all)" if len(obj) > limit else ""
    return f"its entries are {', '.join(entries) or 'none'}{more}"


def strip_wrapper_prefixes(state: StateDict, model_keys: set[str]) -> tuple[StateDict, list[str]]:
    """Remove ``module.``/``_orig_mod.`` while every key carries one (and the model's keys do not).

    Args:
        state: checkpoint tensors by name.
        model_keys: the model's state-dict keys (a model with a submodule named ``module``
            keeps its prefix).

    Returns:
        ``(state, stripped)``: the renamed tensors and the prefixes removed, outermost first.
    """
    stripped: list[str] = []
    while state:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None or (model_keys and all(k.startswith(prefix) for k in model_keys)):
            break
        state = _like(state, ((k[len(prefix) :], v) for k, v in state.items()), rename=_strip_module_prefix(prefix))
        stripped.append(prefix)
    return state, stripped


def drop_profiler_counters(state: StateDict, model_keys: set[str]) -> tuple[StateDict, list[str]]:
    """Remove thop's ``total_ops``/``total_params`` buffers that the model does not have.

    Returns:
        ``(state, dropped)``: the remaining tensors and the names removed.
    """
    dropped = [k for k in state if k.rpartition(".")[2] in PROFILER_COUNTERS and k not in model_keys]
    if dropped:
        log.warning("dropped %d thop counter buffers (total_ops/total_params) left in the checkpoint by profiling", len(dropped))
    return _like(state, ((k, v) for k, v in state.items() if k not in set(dropped))), dropped


def fold_pruning_masks(state: StateDict, model_keys: set[str]) -> tuple[StateDict, list[str]]:
    """Fold ``torch.nn.utils.prune``'s ``X_orig`` and ``X_mask`` into ``X = X_orig * X_mask``.

    Only where the model itself is not pruned (it has ``X``, not ``X_orig``).

    Returns:
        ``(state, folded)``: the tensors with every pair folded, and the names produced (``conv1.weight``).
    """
    folded: list[str] = []
    result: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith("_orig") and name not in model_keys:
            base = name[: -len("_orig")]
            mask = state.get(base + "_mask")
            if mask is not None and mask.shape == tensor.shape:
                result[base] = tensor * mask
                folded.append(base)
                continue
        result[name] = tensor
    consumed = {base + "_mask" for base in folded}
    return _like(state, ((k, v) for k, v in result.items() if k not in consumed)), folded


def module_versions(state: Mapping[str, Any]) -> dict[str, int | None] | None:
    """Each module's saved version (``state._metadata[prefix]["version"]``); ``None`` when the
    state dict carries no metadata (safetensors files, dicts built by hand)."""
    metadata = getattr(state, "_metadata", None)
    if metadata is None:
        return None
    return {prefix: (entry or {}).get("version") for prefix, entry in metadata.items()}


def _like(source: Mapping[str, Any], items: Iterable[tuple[str, Any]], rename: Callable[[str], str | None] | None = None) -> StateDict:
    """A state dict of ``items`` that keeps ``source``'s ``_metadata``, its module prefixes passed
    through ``rename`` (an entry it maps to ``None`` is dropped)."""
    result: StateDict = OrderedDict(items)
    metadata = getattr(source, "_metadata", None)
    if metadata is not None:
        renamed = OrderedDict()
        for prefix, entry in metadata.items():
            new = rename(prefix) if rename is not None else prefix
            if new is not None:
                renamed[new] = entry
        result._metadata = renamed  # type: ignore[attr-defined]
    return result


def _strip_module_prefix(prefix: str) -> Callable[[str], str | None]:
    """Renames metadata prefixes as ``prefix`` is stripped: ``module`` is the root, ``module.bn1``
    is ``bn1``, and the wrapper's own entry goes."""
    bare = prefix.rstrip(".")

    def rename(name: str) -> str | None:
        if name == bare:
            return ""
        return name[len(prefix) :] if name.startswith(prefix) else None

    return rename
