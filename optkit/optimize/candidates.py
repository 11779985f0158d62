"""Candidate chains for ``optkit optimize``, built from the registered passes and their declared options.

A chain is the sequence of stages a pipeline file's ``passes:`` would list. The search space is
the product of the optional stages (fuse, prune to each target, fine-tune, int8) around the ones
the runtime needs (export for onnxruntime). Every stage's options are validated by its pass's own
``Options`` model, so a pass that is not installed, or whose options do not declare what the
search sets (``prune_channels``'s ``target``), leaves its stage out rather than failing later.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from optkit.config.optimize import PRUNE_LADDER, OptimizeSpec
from optkit.errors import PipelineError
from optkit.passes import Pass

__all__ = ["Step", "Chain", "StageKinds", "INT8_OPTIONS", "generate_chains", "prune_targets"]

log = logging.getLogger(__name__)

#: quantize_onnx's options for the int8 stage of every chain: mode auto measures static and dynamic
#: schemes on the data, keeps sensitive layers in float, and keeps the float graph where int8 is
#: slower on this CPU.
INT8_OPTIONS: dict[str, Any] = {"mode": "auto"}


@dataclass(frozen=True)
class StageKinds:
    """The pass names the search builds its chains from (the standard passes by default)."""

    fuse: str = "fuse_bn"
    prune: str = "prune_channels"
    finetune: str = "finetune"
    export: str = "export_onnx"
    int8: str = "quantize_onnx"


@dataclass(frozen=True)
class Step:
    """One stage of a chain: a pass and its options (as a pipeline file gives them)."""

    pass_name: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, pass_name: str, options: dict[str, Any] | None = None) -> Step:
        frozen = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in (options or {}).items()))
        return cls(pass_name, frozen)

    @property
    def option_dict(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.options}

    def as_pass_item(self) -> str | dict[str, Any]:
        """The stage as an item of a pipeline file's ``passes:``."""
        return {self.pass_name: self.option_dict} if self.options else self.pass_name

    @property
    def label(self) -> str:
        options = self.option_dict
        target = options.get("target")
        if isinstance(target, dict):
            metric = next(k for k in ("macs", "params", "latency") if k in target)
            return f"prune-{metric}{target[metric]:g}"
        if "epochs" in options:
            return f"finetune{options['epochs']}"
        return {"quantize_onnx": "int8", "export_onnx": "onnx", "fuse_bn": "fuse"}.get(self.pass_name, self.pass_name)


#: A candidate: its stages in order (the chain prefix of length k is what a cache entry holds).
Chain = tuple[Step, ...]


def chain_name(chain: Chain) -> str:
    """A file-name safe label of ``chain`` (``eager`` for the empty one)."""
    return "+".join(step.label for step in chain) or "eager"


def prune_targets(spec: OptimizeSpec) -> list[float]:
    """The shares the search prunes to: the given ones, else a budget-sized prefix of the ladder
    (a larger budget keeps the smaller one's targets, so its stages are reused)."""
    if spec.prune_targets is not None:
        return list(spec.prune_targets)
    count = 2 if spec.budget_minutes < 6 else 3 if spec.budget_minutes < 15 else 4 if spec.budget_minutes < 30 else len(PRUNE_LADDER)
    return list(PRUNE_LADDER[:count])


def _checked(get_pass: Callable[[str], type[Pass]], name: str, options: dict[str, Any]) -> Step | None:
    """The step, when ``name`` is registered and its declared options accept ``options``; else ``None``."""
    try:
        pass_cls = get_pass(name)
    except PipelineError:
        log.info("optimize: no pass %r is installed; chains go without it", name)
        return None
    try:
        pass_cls.Options.model_validate(options)
    except ValidationError as exc:
        log.warning("optimize: %s does not take %s (%s); chains go without it", name, options, exc.errors()[0]["msg"])
        return None
    return Step.of(name, options)


def generate_chains(
    spec: OptimizeSpec, get_pass: Callable[[str], type[Pass]], *, has_train: bool, kinds: StageKinds | None = None
) -> list[Chain]:
    """Every candidate chain: prune to each target (or not), finetune (when data.train is given),
    fuse, export and int8 (onnxruntime), with and without each optional stage.

    Args:
        spec: the search settings (runtime, target, prune targets, fine-tuning epochs).
        get_pass: finds a registered pass class by name (``host.get_pass``).
        has_train: ``data.train`` is given (fine-tuning is possible).
        kinds: the pass names to build from.

    Returns:
        The chains, distinct, the empty one (the eager baseline) excluded.

    Raises:
        PipelineError: ``runtime: onnxruntime`` without an installed export pass.
    """
    kinds = kinds or StageKinds()
    metric = "params" if spec.target == "size" else "macs"
    fuse = _checked(get_pass, kinds.fuse, {})
    prunes = [s for s in (_checked(get_pass, kinds.prune, {"target": {metric: t}}) for t in prune_targets(spec)) if s is not None]
    finetune = _checked(get_pass, kinds.finetune, {"epochs": spec.finetune_epochs}) if has_train else None
    tails: list[Chain] = [()]
    if spec.runtime == "onnxruntime":
        export = _checked(get_pass, kinds.export, {})
        if export is None:
            raise PipelineError(f"optimize.runtime: onnxruntime needs the {kinds.export} pass, which is not installed")
        int8 = _checked(get_pass, kinds.int8, INT8_OPTIONS)
        tails = [(export,), *([(export, int8)] if int8 is not None else [])]
    heads: list[Chain] = [()]
    for prune in prunes:
        heads.append((prune,))
        if finetune is not None:
            heads.append((prune, finetune))
    # Fusion after training: fine-tuning a pruned model without its BatchNorm layers loses what
    # they stabilise (measured on the digits CNN: 14% top-1 after fuse, prune, finetune).
    middles: list[Chain] = [()] + ([(fuse,)] if fuse is not None else [])
    chains = [head + middle + tail for head, middle, tail in itertools.product(heads, middles, tails)]
    return [chain for chain in dict.fromkeys(chains) if chain]
