"""Models: sources (``scheme:target``), checkpoints read safely, weights paired and loaded,
freezing, classifier heads, small facts about layers, BatchNorm folding, module rules (what a library's
module computes, for fusion, pruning and MAC counting), and YOLO models recognised by class path.

Plugins use what is exported here: the standard source loaders, :class:`SourceRequest`, the
classifier-head finder, freezing (:func:`apply_freeze`), the layer helpers, :class:`ModuleRule` and the
folding arithmetic.
"""

from optkit.models.bn_folding import bn_affine, fold_bn_into_layer
from optkit.models.classifier_head import (
    HEAD_TYPES,
    ClassifierNotFoundError,
    auxiliary_classifiers,
    candidate_heads_hint,
    find_classifier,
)
from optkit.models.freezing import ALL_BUT_HEAD, apply_freeze
from optkit.models.layers import eval_mode, in_width, module_mode, out_width, replace_module
from optkit.models.loading import load_model
from optkit.models.sources import (
    SourceLoader,
    SourceRequest,
    call_factory,
    import_beside,
    import_callable,
    is_weights_path,
    load_file,
    load_python,
    load_torchvision,
)
from optkit.models.rules import AttentionHeads, ModuleRule, ModuleRules, call_rule, class_path, find_rule
from optkit.models.yolo import YoloModel, deployment_view, detection_channel_groups, is_instance_of, recognise_yolo

__all__ = [
    "SourceRequest",
    "SourceLoader",
    "load_torchvision",
    "load_python",
    "load_file",
    "is_weights_path",
    "import_callable",
    "call_factory",
    "import_beside",
    "load_model",
    "HEAD_TYPES",
    "ClassifierNotFoundError",
    "find_classifier",
    "auxiliary_classifiers",
    "candidate_heads_hint",
    "ALL_BUT_HEAD",
    "apply_freeze",
    "in_width",
    "out_width",
    "replace_module",
    "module_mode",
    "eval_mode",
    "YoloModel",
    "recognise_yolo",
    "deployment_view",
    "detection_channel_groups",
    "class_path",
    "is_instance_of",
    "bn_affine",
    "fold_bn_into_layer",
    "ModuleRule",
    "ModuleRules",
    "AttentionHeads",
    "find_rule",
    "call_rule",
]
