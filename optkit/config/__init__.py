"""Configuration files: YAML read safely with line numbers, validated into pipeline and sweep specs."""

from optkit.config.data import DATA_ROLES, DatasetSpec, DataSpec, TransformSpec
from optkit.config.documents import ConfigDocument, SourceSpec, StrictModel, parse_config, read_config
from optkit.config.pipeline import (
    MAX_INPUT_ELEMENTS,
    InputShape,
    SourceLookup,
    check_input_shape,
    MeasureSpec,
    ModelSpec,
    PassLookup,
    Pipeline,
    PipelineFile,
    Stage,
    check_accuracy_settings,
    WeightsSpec,
    load_pipeline,
    parse_pipeline,
    pipeline_json_schema,
)
from optkit.config.sweep import SweepFile, SweepModel, load_sweep, parse_sweep

__all__ = [
    "ConfigDocument",
    "StrictModel",
    "SourceSpec",
    "read_config",
    "parse_config",
    "DATA_ROLES",
    "TransformSpec",
    "DatasetSpec",
    "DataSpec",
    "WeightsSpec",
    "ModelSpec",
    "MeasureSpec",
    "PipelineFile",
    "Stage",
    "check_accuracy_settings",
    "Pipeline",
    "PassLookup",
    "SourceLookup",
    "InputShape",
    "MAX_INPUT_ELEMENTS",
    "check_input_shape",
    "load_pipeline",
    "parse_pipeline",
    "pipeline_json_schema",
    "SweepModel",
    "SweepFile",
    "load_sweep",
    "parse_sweep",
]
