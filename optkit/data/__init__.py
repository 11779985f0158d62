"""Data: the ``data:`` section of a pipeline as datasets and loaders, dataset sources by scheme,
the image transform, checks against the model, and the digits task that ships with optkit.

Plugins use what is exported here: the standard dataset loaders and :class:`DatasetRequest` (to
register schemes through ``optkit_register_datasets``), :func:`image_folder`, the digits data set
and model.
"""

from optkit.data.checks import check_labels_fit, check_sample_shapes
from optkit.data.digits import (
    DIGITS_CLASSES,
    DIGITS_WEIGHTS,
    DIGITS_WIDTHS,
    DigitsCNN,
    DigitsFolders,
    digits_cnn,
    digits_imagefolder,
)
from optkit.data.loaders import DataSet, DatasetLookup, DeviceLoader, PipelineData, as_labeled, build_data
from optkit.data.sources import (
    DatasetLoader,
    DatasetRequest,
    UnlabeledImages,
    image_folder,
    load_imagefolder,
    load_images,
    load_python_dataset,
    verify_images,
)
from optkit.data.transforms import build_transform

__all__ = [
    "DatasetRequest",
    "DatasetLoader",
    "DatasetLookup",
    "load_imagefolder",
    "load_images",
    "UnlabeledImages",
    "load_python_dataset",
    "image_folder",
    "verify_images",
    "build_transform",
    "DataSet",
    "PipelineData",
    "DeviceLoader",
    "as_labeled",
    "build_data",
    "check_sample_shapes",
    "check_labels_fit",
    "DIGITS_CLASSES",
    "DIGITS_WEIGHTS",
    "DIGITS_WIDTHS",
    "DigitsFolders",
    "DigitsCNN",
    "digits_imagefolder",
    "digits_cnn",
]
