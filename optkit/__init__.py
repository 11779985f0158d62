"""optkit: plugin-based model optimization for PyTorch.

The public API is ``optkit.__all__`` below, and the test kit :mod:`optkit.testing`: what a plugin
author and a library user need. Plugins import from here, and only from here::

    from optkit import Pass, PassContext, StageError, hookimpl

Everything else (the packages :mod:`optkit.config`, :mod:`optkit.models`, :mod:`optkit.measure`,
...) is internal: it may change in any release. The standard plugins under ``plugins/`` use this
API only, as a third-party plugin does (``tests/test_layering.py`` checks them and the example
plugin in ``examples/``).

Everything is resolved on first use (PEP 562): importing optkit imports neither torch nor
pydantic nor pluggy, so ``optkit --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optkit.artifacts import Artifact, OnnxArtifact
    from optkit.data.sources import STANDARD_DATASETS, DatasetRequest
    from optkit.errors import OptkitError, PipelineError, PluginError, StageError
    from optkit.files import atomic_write_bytes
    from optkit.host.hookspecs import hookimpl
    from optkit.inputs import ExampleInputs, InputDef
    from optkit.measure.accuracy import classifier_outputs, evaluate
    from optkit.measure.cpu import CpuInfo, cpu_info
    from optkit.measure.drift import channel_groups_for, compare_outputs, drift_exceeds, output_excesses
    from optkit.measure.flops import count_macs
    from optkit.measure.latency import time_callable
    from optkit.measure.mac_rules import zero_macs
    from optkit.measure.outputs import flatten_outputs, output_leaves, resolve_output_selection, select_outputs
    from optkit.measure.params import count_params
    from optkit.measure.size import file_bytes
    from optkit.models.bn_folding import bn_affine, fold_bn_into_layer
    from optkit.models.classifier_head import ClassifierNotFoundError, auxiliary_classifiers, find_classifier
    from optkit.models.freezing import ALL_BUT_HEAD, apply_freeze
    from optkit.models.importance import GroupTensor, PruningGroup
    from optkit.models.layers import eval_mode, in_width, out_width, replace_module
    from optkit.models.rules import AttentionHeads, ChannelGroup, ModuleRule, call_rule, class_path, find_rule
    from optkit.models.sources import STANDARD_SOURCES, SourceRequest
    from optkit.passes import Pass, PassContext, PassData, Progress, Tolerance
    from optkit.results import RunReport, StageResult
    from optkit.run.runner import run_pipeline

#: The public API (a literal list, for readers and doc tools; a test checks it against _EXPORTS).
__all__ = [
    # Writing a pass, and what it may return
    "Pass",
    "PassContext",
    "PassData",
    "ExampleInputs",
    "InputDef",
    "Progress",
    "Tolerance",
    "Artifact",
    "OnnxArtifact",
    "hookimpl",
    # Errors a pass raises, and a caller catches
    "OptkitError",
    "PipelineError",
    "StageError",
    "PluginError",
    # What the other hooks register: model sources, data sets, module rules
    "SourceRequest",
    "STANDARD_SOURCES",
    "DatasetRequest",
    "STANDARD_DATASETS",
    "ModuleRule",
    "AttentionHeads",
    "ChannelGroup",
    "class_path",
    "find_rule",
    "call_rule",
    # Running a pipeline from Python, and its report
    "run_pipeline",
    "RunReport",
    "StageResult",
    # Model surgery a pass needs
    "replace_module",
    "in_width",
    "out_width",
    "eval_mode",
    "bn_affine",
    "fold_bn_into_layer",
    "find_classifier",
    "auxiliary_classifiers",
    "ClassifierNotFoundError",
    "apply_freeze",
    "ALL_BUT_HEAD",
    # Measuring inside a pass (the runner measures every stage itself)
    "count_macs",
    "count_params",
    "time_callable",
    "zero_macs",
    "file_bytes",
    "evaluate",
    "classifier_outputs",
    "output_leaves",
    "flatten_outputs",
    "select_outputs",
    "resolve_output_selection",
    "compare_outputs",
    "drift_exceeds",
    "output_excesses",
    "channel_groups_for",
    "cpu_info",
    "CpuInfo",
    # Channel-importance criteria (optkit_register_importances): the view of one group they score
    "PruningGroup",
    "GroupTensor",
    # Writing files
    "atomic_write_bytes",
    "__version__",
]

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # Writing a pass, and what it may return
    "Pass": "optkit.passes",
    "PassContext": "optkit.passes",
    "PassData": "optkit.passes",
    "ExampleInputs": "optkit.inputs",
    "InputDef": "optkit.inputs",
    "Progress": "optkit.passes",
    "Tolerance": "optkit.passes",
    "Artifact": "optkit.artifacts",
    "OnnxArtifact": "optkit.artifacts",
    "hookimpl": "optkit.host.hookspecs",
    # Errors a pass raises, and a caller catches
    "OptkitError": "optkit.errors",
    "PipelineError": "optkit.errors",
    "StageError": "optkit.errors",
    "PluginError": "optkit.errors",
    # What the other hooks register: model sources, data sets, module rules
    "SourceRequest": "optkit.models.sources",
    "STANDARD_SOURCES": "optkit.models.sources",
    "DatasetRequest": "optkit.data.sources",
    "STANDARD_DATASETS": "optkit.data.sources",
    "ModuleRule": "optkit.models.rules",
    "AttentionHeads": "optkit.models.rules",
    "ChannelGroup": "optkit.models.rules",
    "class_path": "optkit.models.rules",
    "find_rule": "optkit.models.rules",
    "call_rule": "optkit.models.rules",
    # Running a pipeline from Python, and its report
    "run_pipeline": "optkit.run.runner",
    "RunReport": "optkit.results",
    "StageResult": "optkit.results",
    # Model surgery a pass needs
    "replace_module": "optkit.models.layers",
    "in_width": "optkit.models.layers",
    "out_width": "optkit.models.layers",
    "eval_mode": "optkit.models.layers",
    "bn_affine": "optkit.models.bn_folding",
    "fold_bn_into_layer": "optkit.models.bn_folding",
    "find_classifier": "optkit.models.classifier_head",
    "auxiliary_classifiers": "optkit.models.classifier_head",
    "ClassifierNotFoundError": "optkit.models.classifier_head",
    "apply_freeze": "optkit.models.freezing",
    "ALL_BUT_HEAD": "optkit.models.freezing",
    # Measuring inside a pass (the runner measures every stage itself)
    "count_macs": "optkit.measure.flops",
    "count_params": "optkit.measure.params",
    "time_callable": "optkit.measure.latency",
    "zero_macs": "optkit.measure.mac_rules",
    "file_bytes": "optkit.measure.size",
    "evaluate": "optkit.measure.accuracy",
    "classifier_outputs": "optkit.measure.accuracy",
    "output_leaves": "optkit.measure.outputs",
    "flatten_outputs": "optkit.measure.outputs",
    "select_outputs": "optkit.measure.outputs",
    "resolve_output_selection": "optkit.measure.outputs",
    "compare_outputs": "optkit.measure.drift",
    "drift_exceeds": "optkit.measure.drift",
    "output_excesses": "optkit.measure.drift",
    "channel_groups_for": "optkit.measure.drift",
    "cpu_info": "optkit.measure.cpu",
    "CpuInfo": "optkit.measure.cpu",
    "PruningGroup": "optkit.models.importance",
    "GroupTensor": "optkit.models.importance",
    # Writing files
    "atomic_write_bytes": "optkit.files",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name == "__version__":
        return importlib.import_module("optkit.results").optkit_version()
    raise AttributeError(f"module 'optkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
