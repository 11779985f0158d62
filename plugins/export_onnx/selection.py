"""Which module export_onnx exports: the model, some of its outputs, or a YOLO model's deployment output."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from optkit import ModuleRule, StageError, find_rule, output_leaves, resolve_output_selection, select_outputs

__all__ = ["SelectedOutputs", "ExportedModule", "exported_module"]


class SelectedOutputs(nn.Module):
    """``model`` returning only the outputs ``indices`` (flattened order): one tensor, or a tuple."""

    def __init__(self, model: nn.Module, indices: list[int]):
        super().__init__()
        self.model = model
        self.indices = list(indices)

    def forward(self, x: torch.Tensor) -> Any:
        return select_outputs(self.model(x), self.indices)

    def extra_repr(self) -> str:
        return f"indices={self.indices}"


@dataclass
class ExportedModule:
    """The module to export and how its outputs relate to the model's.

    Attributes:
        module: what is exported: the model, a wrapper selecting its outputs, or a deployment copy.
        selection: indices of its outputs among the model's flattened outputs; ``None``: all of them.
        names: default graph-output names (the model's own names of the selected outputs).
        details: what the report says about the choice.
        copied: ``module`` is a copy (a deployment view), the export's to change.
    """

    module: nn.Module
    selection: list[int] | None = None
    names: list[str] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    copied: bool = False


def _deployment_view(model: nn.Module, rules: Mapping[str, ModuleRule]) -> tuple[nn.Module, dict[str, Any]] | None:
    """The deployment view of ``model`` that its module rule gives (``ModuleRule.deployment``), or ``None``."""
    rule = find_rule(model, rules)
    return rule.deployment(model) if rule is not None and rule.deployment is not None else None


def exported_module(
    reference: nn.Module, example: torch.Tensor, outputs: list[int | str] | None, deployment_output: bool, rules: Mapping[str, ModuleRule]
) -> ExportedModule:
    """Choose what to export from ``reference`` (an eval copy of the model).

    Args:
        reference: the model, in eval mode.
        example: the example batch.
        outputs: the ``outputs`` option: indices, names or paths of the model's outputs.
        deployment_output: export the deployment output a module rule gives for the model (a YOLO
            model's, say) when ``outputs`` is not given.
        rules: the module rules (``ctx.module_rules``).

    Raises:
        StageError: ``outputs`` names no output (the message lists them), or a deployment output
            that is not the leading outputs of the model's eval output.
    """
    with torch.inference_mode():
        leaves = output_leaves(reference(example))
    if outputs is not None:
        try:
            indices = resolve_output_selection(outputs, leaves)
        except ValueError as error:
            raise StageError(f"export_onnx: option outputs: {error}") from None
        return ExportedModule(
            SelectedOutputs(reference, indices),
            indices,
            [leaves[i].name for i in indices],
            {"selected_outputs": [leaves[i].describe() for i in indices]},
        )
    view = _deployment_view(reference, rules) if deployment_output else None
    if view is None:
        return ExportedModule(reference)
    module, details = view
    with torch.inference_mode():
        deployed = output_leaves(module(example))
    # The head in export mode returns the leading part of its eval output (Detect: y of (y, raw)).
    if [leaf.shape for leaf in deployed] != [leaf.shape for leaf in leaves[: len(deployed)]]:
        raise StageError(
            f"export_onnx: the {details['library']} deployment output {[list(leaf.shape) for leaf in deployed]} is not the "
            f"leading part of the eval output {[list(leaf.shape) for leaf in leaves]}; set deployment_output: false "
            "and select outputs with the outputs option"
        )
    selection = list(range(len(deployed))) if len(deployed) < len(leaves) else None
    return ExportedModule(module, selection, None, {"deployment_output": details}, copied=True)
