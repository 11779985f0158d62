"""Building the model a pipeline's ``model:`` section describes: source, then weights, then freezing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from optkit.errors import PipelineError, plugin_code
from optkit.inputs import ExampleInputs
from optkit.models.freezing import apply_freeze
from optkit.models.layers import make_pruning_permanent
from optkit.models.sources import SourceLoader, SourceRequest
from optkit.models.weights import load_weights_into, weights_spec_of

if TYPE_CHECKING:
    from torch import nn

    from optkit.config.pipeline import ModelSpec

__all__ = ["load_model"]


def load_model(
    spec: ModelSpec, loader: SourceLoader, base_dir: Path, *, plugin: str = "", with_inputs: bool = False
) -> tuple[nn.Module, dict[str, Any]] | tuple[nn.Module, dict[str, Any], ExampleInputs | None]:
    """Build the model ``spec`` describes with ``loader`` (the source registered for its scheme),
    load its weights and freeze what it names; the model is returned in eval mode.

    A model pruned with ``torch.nn.utils.prune`` and not finalised has its masks applied for
    good (``prune.remove``): it computes the same, and copies, saves and counts like any other.

    Args:
        spec: the validated ``model:`` section.
        loader: the source loader for ``spec.scheme``.
        base_dir: relative paths resolve against it (the pipeline file's folder).
        plugin: who registered ``loader`` (``"plugin 'x' (dist 1.0)"``), for messages.
        with_inputs: also return the model's example inputs.

    Returns:
        ``(model, details)``; details say what was loaded from where. With ``with_inputs``,
        ``(model, details, example_inputs)``: the example inputs the source gave, or ``None`` when
        it gave none or the pipeline file sets ``input_shape`` or ``inputs`` (which win).

    Raises:
        PipelineError: unknown model, unreadable or unsafe checkpoint, a loader that refuses the
            source (naming ``model.source``), or returns something other than a module.
        PluginBugError: the loader raised anything but an optkit error (a bug in its plugin).
    """
    from torch import nn

    request = SourceRequest(spec.target, spec, base_dir)
    with plugin_code(f"model.source ({spec.source})", plugin or "plugin '?'", f"the {spec.scheme!r} source loader", named=("model.",)):
        model = loader(request)
    if not isinstance(model, nn.Module):
        raise PipelineError(
            f"model.source: the {spec.scheme!r} loader of {plugin or 'plugin ?'} returned {type(model).__name__}, not an nn.Module"
        )
    pruned = make_pruning_permanent(model)
    if pruned:
        request.details["pruning_made_permanent"] = pruned
    weights = weights_spec_of(spec)
    if weights is not None:
        request.details["weights"] = load_weights_into(model, weights, base_dir, list_keys=spec.list_keys)
    if spec.freeze:
        request.details["freeze"] = apply_freeze(model, spec.freeze, list_keys=spec.list_keys)
    if not with_inputs:
        return model.eval(), request.details
    return model.eval(), request.details, _example_inputs(spec, request)


def _example_inputs(spec: ModelSpec, request: SourceRequest) -> ExampleInputs | None:
    if request.example_inputs is None or spec.inputs_given:
        return None
    try:
        inputs = ExampleInputs.of(request.example_inputs)
    except TypeError as exc:
        raise PipelineError(f"model.source: {spec.source!r} returned example inputs that optkit cannot use: {exc}") from exc
    request.details["example_inputs"] = inputs.describe()
    return inputs
