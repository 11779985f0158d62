"""``optkit info``: one model measured without a pipeline, with YOLOv5-style per-layer detail."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from torch import nn

from optkit.config.data import DataSpec, data_source
from optkit.config.pipeline import MeasureSpec, ModelSpec, check_input_shape
from optkit.errors import PipelineError
from optkit.host.facade import Host
from optkit.inputs import ExampleInputs
from optkit.measure.flops import profile_macs
from optkit.measure.stage import measure
from optkit.measure.thop_distribution import thop_owner, thop_warning
from optkit.run.data import prepare_data
from optkit.run.device import device_name, select_device
from optkit.run.runner import seeded_inputs
from optkit.run.seeding import seeded_construction

if TYPE_CHECKING:
    from optkit.models.rules import ModuleRule

__all__ = ["parse_input_shape", "data_spec", "inspect_model", "model_info", "parameter_table"]


def parse_input_shape(text: str) -> list[int]:
    """``1,3,224,224`` or ``1x3x224x224`` as a list; three numbers (C,H,W) get batch 1.

    Raises:
        PipelineError: not a list of 3 or more positive integers, or a batch larger than
            :data:`optkit.config.pipeline.MAX_INPUT_ELEMENTS`.
    """
    parts = [p for p in re.split(r"[,x\s]+", text.strip().strip("[]()")) if p]
    if len(parts) < 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise PipelineError(f"--input-shape {text!r}: expected positive integers such as 1,3,224,224")
    shape = [int(p) for p in parts]
    try:
        check_input_shape(shape)
    except ValueError as exc:
        raise PipelineError(f"--input-shape {text}: {exc}") from None
    return [1, *shape] if len(shape) == 3 else shape


def data_spec(source: str, transform: dict[str, Any] | None = None, limit: int | None = None, batch_size: int = 64) -> DataSpec:
    """The ``data:`` section ``optkit info --data`` evaluates on: ``source`` as ``data.eval``.

    Args:
        source: a data source (``imagefolder:PATH``, ``python:pkg.mod:callable``), or a folder
            (``imagefolder:`` is implied).
        transform: the ``data.transform`` keys (``resize``, ``center_crop``, ``mean``, ``std``).
        limit: evaluate on the first ``limit`` samples.
        batch_size: samples per batch.

    Raises:
        PipelineError: a transform key or value that a pipeline file would refuse.
    """
    try:
        return DataSpec(transform=transform or {}, eval={"source": data_source(source), "limit": limit, "batch_size": batch_size})
    except ValidationError as exc:
        raise PipelineError(f"--data/--transform: {_first_error(exc)}") from None


def _first_error(exc: ValidationError, whole: str = "value") -> str:
    """``key.path: message`` of the first error (``whole`` names an error of the whole object)."""
    error = exc.errors()[0]
    return f"{'.'.join(map(str, error['loc'])) or whole}: {error['msg']}"


def inspect_model(
    source: str,
    input_shape: list[int] | None = None,
    *,
    inputs: list[dict[str, Any]] | dict[str, dict[str, Any]] | None = None,
    host: Host | None = None,
    weights: str | None = None,
    device: str = "auto",
    warmup: int = 10,
    iters: int = 50,
    latency: bool = True,
    verbose: bool = False,
    trust_checkpoint: bool = False,
    seed: int = 0,
    data: DataSpec | None = None,
) -> dict[str, Any]:
    """Load ``source`` as a pipeline would and measure it once: what ``optkit info`` prints.

    Args:
        source: ``scheme:target`` (``torchvision:resnet50``, ``file:model.pt``, ``python:pkg.mod:factory``).
        input_shape: the input batch shape (MACs and latency are for this batch).
        inputs: several or non-float inputs instead, as ``model.inputs`` in a pipeline file. With
            neither, the source's own example inputs (an ``hf:`` model's token ids), else ``[1, 3, 224, 224]``.
        host: the plugins (sources) to load through; a fresh :class:`~optkit.host.facade.Host` by default.
        weights: as ``model.weights`` in a pipeline file.
        device: ``auto | cpu | cuda | cuda:N | N``.
        warmup, iters: latency warm-up and timed calls.
        latency: time the model.
        verbose: add per-parameter and per-layer rows (see :func:`model_info`).
        trust_checkpoint: allow full unpickling of ``file:`` sources and weights.
        seed: seed of the input batch, and of the random generators before the model is built.
        data: evaluate top-1/top-5 accuracy on ``data.eval`` (see :func:`data_spec`).

    Raises:
        PipelineError: a bad source, weights, device or data (checked before anything is measured).
    """
    try:
        spec = ModelSpec(source=source, input_shape=input_shape, inputs=inputs, weights=weights, trust_checkpoint=trust_checkpoint)
        settings = MeasureSpec(warmup=warmup, iters=iters, latency=latency, flops=False)
    except ValidationError as exc:
        raise PipelineError(_first_error(exc, "model")) from None
    host = host or Host()
    torch_device = select_device(device)
    with seeded_construction(seed):
        model, details, source_inputs = host.load_model(spec, Path.cwd(), with_inputs=True)
    model = model.to(torch_device)
    examples = source_inputs.to(torch_device) if source_inputs is not None else seeded_inputs(spec.input_defs(), seed, torch_device)
    run_data = prepare_data(data, host, model, examples, torch_device, base_dir=Path.cwd(), seed=seed, accuracy=data is not None)
    rules = host.rule_table()
    metrics = measure(model, examples, settings, torch_device, rules).metrics.model_dump()
    info: dict[str, Any] = {
        "model": source,
        "input_shape": list(examples.first.shape),
        "inputs": examples.describe(),
        "device": str(torch_device),
        "device_name": device_name(torch_device),
    }
    info.update(model_info(model, examples, metrics, verbose=verbose, module_rules=rules))
    if run_data.accuracy is not None:
        accuracy = run_data.accuracy.evaluate(model)[0]
        info["accuracy"] = accuracy.model_dump(mode="json") if accuracy is not None else None
        info["data"] = run_data.details["eval"]
    info["load"] = details
    owner = thop_owner()
    info["thop"] = {**owner.as_dict(), "warning": thop_warning(owner)}
    return info


def parameter_table(model: nn.Module) -> list[dict[str, Any]]:
    """One row per parameter, as YOLOv5's ``model_info(verbose=True)`` prints them.

    Returns:
        Rows with ``index``, ``name``, ``trainable``, ``params``, ``shape``, ``mean`` and ``std``
        (``std`` is 0 for a single-element tensor; both are ``None`` on the meta device).
    """
    rows = []
    with torch.no_grad():
        for index, (name, p) in enumerate(model.named_parameters()):
            values = p.detach().double() if not p.is_meta else None
            rows.append(
                {
                    "index": index,
                    "name": name,
                    "trainable": p.requires_grad,
                    "params": p.numel(),
                    "shape": list(p.shape),
                    "mean": float(values.mean()) if values is not None and p.numel() else None,
                    "std": float(values.std()) if values is not None and p.numel() > 1 else (0.0 if values is not None else None),
                }
            )
    return rows


def model_info(
    model: nn.Module,
    inputs: torch.Tensor | ExampleInputs,
    metrics: dict[str, Any],
    *,
    verbose: bool = False,
    module_rules: Mapping[str, ModuleRule] | None = None,
) -> dict[str, Any]:
    """Add MACs (and, when ``verbose``, per-parameter and per-layer rows) to ``metrics``.

    Args:
        model: the measured model (not changed).
        inputs: the batch it was measured on.
        metrics: what :func:`optkit.measure.stage.measure` returned for it (without MACs).
        verbose: add ``parameters`` (see :func:`parameter_table`) and ``layer_macs``: one row per
            module with MACs, in ``named_modules()`` order, with ``macs`` (everything under it:
            a container shows the sum of its children), ``self_macs``, ``counted_by``, ``calls``
            and ``depth`` (see :attr:`optkit.measure.flops.MacsProfile.layers`).
        module_rules: module rules by class path (their ``macs`` count what they describe).

    Returns:
        ``metrics`` updated in place.
    """
    profile = profile_macs(model, inputs, module_rules)
    metrics.update(profile.metrics())
    if verbose:
        metrics["parameters"] = parameter_table(model)
        metrics["layer_macs"] = profile.layers
    return metrics
