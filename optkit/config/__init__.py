"""Configuration files: YAML read safely with line numbers, validated into pipeline and sweep specs."""

from optkit.config.documents import ConfigDocument, StrictModel, parse_config, read_config
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
    WeightsSpec,
    load_pipeline,
    parse_pipeline,
    pipeline_json_schema,
)
from optkit.config.sweep import SweepFile, SweepModel, load_sweep, parse_sweep

__all__ = [
    "ConfigDocument",
    "StrictModel",
    "read_config",
    "parse_config",
    "WeightsSpec",
    "ModelSpec",
    "MeasureSpec",
    "PipelineFile",
    "Stage",
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
