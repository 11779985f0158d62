"""Models: sources (``scheme:target``), checkpoints read safely, weights paired and loaded,
freezing, classifier heads, small facts about layers, and YOLO models recognised by class path.

Plugins use what is exported here: the standard source loaders, :class:`SourceRequest`, the
classifier-head finder, freezing (:func:`apply_freeze`) and the layer helpers.
"""

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
    import_beside,
    import_callable,
    is_weights_path,
    load_file,
    load_python,
    load_torchvision,
)
from optkit.models.yolo import YoloModel, class_path, deployment_view, detection_channel_groups, is_instance_of, recognise_yolo

__all__ = [
    "SourceRequest",
    "SourceLoader",
    "load_torchvision",
    "load_python",
    "load_file",
    "is_weights_path",
    "import_callable",
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
]
