"""Pipeline files: YAML in, a validated Pipeline out; every bad input answered with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import plugins_for_tests
import pytest

from optkit.config.pipeline import Pipeline, load_pipeline, parse_pipeline, pipeline_json_schema
from optkit.config.yaml_lines import load_yaml_with_lines
from optkit.errors import PipelineError
from optkit.host.facade import Host

GOOD = """\
model:
  source: python:plugins_for_tests:tiny_net
  weights: none
  input_shape: [2, 3, 64, 64]
device: cpu
measure: {warmup: 1, iters: 3}
passes:
  - identity
  - scale: {factor: 0.5, mode: weights}
  - scale:
  - writes_artifact
output: runs/tiny
"""


@pytest.fixture(scope="module")
def test_host() -> Host:
    return Host.with_plugins(plugins_for_tests)


def load_error(write_pipeline, test_host: Host, text: str) -> PipelineError:
    path = write_pipeline(text)
    with pytest.raises(PipelineError) as info:
        load_pipeline(path, test_host.get_pass)
    return info.value


def test_good_pipeline_resolves_passes_options_and_lines(write_pipeline, test_host):
    path = write_pipeline(GOOD)

    pipeline = load_pipeline(path, test_host.get_pass)

    assert isinstance(pipeline, Pipeline)
    assert [(s.index, s.pass_name, s.line) for s in pipeline.stages] == [
        (1, "identity", 8), (2, "scale", 9), (3, "scale", 10), (4, "writes_artifact", 11)
    ]
    assert pipeline.stages[1].pass_cls is plugins_for_tests.Scale
    assert pipeline.stages[1].options.factor == 0.5 and pipeline.stages[1].options.mode == "weights"
    assert pipeline.stages[2].options.factor == 2.0  # `scale:` with no options: the defaults
    assert pipeline.model.weights is None and pipeline.model.input_shape == [2, 3, 64, 64]
    assert pipeline.measure.warmup == 1 and pipeline.measure.iters == 3
    assert pipeline.output_dir == Path("runs/tiny")
    assert pipeline.base_dir == path.parent


def test_summary_is_json_and_lists_stage_options(write_pipeline, test_host):
    pipeline = load_pipeline(write_pipeline(GOOD), test_host.get_pass)

    summary = json.loads(json.dumps(pipeline.summary()))

    assert summary["model"]["source"] == "python:plugins_for_tests:tiny_net"
    assert summary["passes"][1] == {"pass": "scale", "options": {"factor": 0.5, "mode": "weights", "layers": []}}


def test_default_output_folder_is_named_for_the_file(write_pipeline, test_host):
    text = GOOD.replace("output: runs/tiny\n", "")
    assert load_pipeline(write_pipeline(text, "my-model.yaml"), test_host.get_pass).output_dir == Path("runs/my-model")


def test_duplicate_key_is_rejected_with_both_lines(write_pipeline, test_host):
    error = load_error(write_pipeline, test_host, GOOD.replace("device: cpu\n", "device: cpu\ndevice: cuda\n"))

    assert error.line == 6
    assert str(error).endswith("pipeline.yaml:6: duplicate key 'device' (first given on line 5)")


def test_duplicate_key_inside_options_is_rejected(write_pipeline, test_host):
    text = GOOD.replace("{factor: 0.5, mode: weights}", "{factor: 0.5, factor: 2}")
    error = load_error(write_pipeline, test_host, text)
    assert (error.line, error.message) == (9, "duplicate key 'factor' (first given on line 9)")


def test_unknown_top_level_key_suggests_the_close_one(write_pipeline, test_host):
    error = load_error(write_pipeline, test_host, GOOD.replace("device: cpu", "devise: cpu"))

    assert error.line == 5
    assert error.message.startswith("unknown key 'devise'; did you mean 'device'? (known: model, device,")


def test_unknown_nested_key_suggests_the_close_one(write_pipeline, test_host):
    error = load_error(write_pipeline, test_host, GOOD.replace("iters: 3", "iter: 3"))

    assert error.line == 6
    assert error.message.startswith("unknown key 'measure.iter'; did you mean 'iters'?")


def test_unknown_pass_names_the_closest_registered_passes(write_pipeline, test_host):
    error = load_error(write_pipeline, test_host, GOOD.replace("  - identity", "  - identty"))

    assert error.line == 8
    assert error.message.startswith("stage 1: unknown pass 'identty'; did you mean 'identity'?")


def test_unknown_pass_without_a_close_name_lists_the_registered_ones(write_pipeline, test_host):
    error = load_error(write_pipeline, test_host, GOOD.replace("  - identity", "  - distill_teacher"))
    assert "stage 1: unknown pass 'distill_teacher'; registered: " in error.message
    assert "identity" in error.message and "writes_artifact" in error.message


def test_wrong_option_type_names_stage_pass_option_expected_given_and_line(write_pipeline, test_host):
    error = load_error(write_pipeline, test_host, GOOD.replace("factor: 0.5", "factor: fast"))

    assert error.line == 9
    assert error.message == (
        "stage 2 (scale): option 'factor': Input should be a valid number, "
        "unable to parse string as a number, got 'fast'"
    )


def test_option_on_its_own_line_is_located_on_that_line(write_pipeline, test_host):
    text = GOOD.replace("  - scale:\n", "  - scale:\n      factor: 1\n      layers: [1, two]\n")
    error = load_error(write_pipeline, test_host, text)

    assert error.line == 12
    assert error.message.startswith("stage 3 (scale): option 'layers.1': Input should be a valid integer")
    assert error.message.endswith("got 'two'")


def test_unknown_option_names_the_known_ones(write_pipeline, test_host):
    error = load_error(write_pipeline, test_host, GOOD.replace("mode: weights", "mdoe: weights"))
    assert error.line == 9
    assert error.message == (
        "stage 2 (scale): unknown option 'mdoe'; did you mean 'mode'? (known: factor, mode, layers)"
    )


def test_options_must_be_a_mapping(write_pipeline, test_host):
    error = load_error(write_pipeline, test_host, GOOD.replace("{factor: 0.5, mode: weights}", "[0.5]"))
    assert (error.line, error.message) == (9, "stage 2 (scale): options must be a mapping, got [0.5]")


def test_a_stage_with_two_passes_is_rejected(write_pipeline, test_host):
    text = GOOD.replace("  - writes_artifact\n", "  - {identity: {}, scale: {}}\n")
    error = load_error(write_pipeline, test_host, text)
    assert error.line == 11
    assert error.message.startswith("stage 4: expected a pass name or 'name: {options}'")


def test_missing_model_is_named(write_pipeline, test_host):
    text = GOOD.split("device:", 1)[1]
    error = load_error(write_pipeline, test_host, "device:" + text)
    assert (error.line, error.message) == (1, "missing required key 'model'")


def test_model_source_needs_a_scheme(write_pipeline, test_host):
    error = load_error(write_pipeline, test_host, GOOD.replace("python:plugins_for_tests:tiny_net", "resnet18"))
    assert error.line == 2
    assert "key 'model.source': Value error, expected scheme:name, e.g. torchvision:resnet50" in error.message
    assert error.message.endswith("got 'resnet18'")


def test_wrong_type_in_the_file_settings(write_pipeline, test_host):
    error = load_error(write_pipeline, test_host, GOOD.replace("iters: 3", "iters: 0"))
    assert (error.line, error.message) == (6, "key 'measure.iters': Input should be greater than 0, got 0")


def test_missing_file(tmp_path, test_host):
    with pytest.raises(PipelineError) as info:
        load_pipeline(tmp_path / "nope.yaml", test_host.get_pass)
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: no such pipeline file"


def test_folder_instead_of_a_file(tmp_path, test_host):
    with pytest.raises(PipelineError) as info:
        load_pipeline(tmp_path, test_host.get_pass)
    assert str(info.value) == f"{tmp_path}: is a folder, not a pipeline file"


def test_file_that_is_not_utf8(tmp_path, test_host):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model: {source: 'python:caf\xe9:net'}\n".encode("latin-1"))
    with pytest.raises(PipelineError) as info:
        load_pipeline(path, test_host.get_pass)
    assert str(info.value).startswith(f"{path}: cannot read pipeline file: 'utf-8' codec can't decode byte 0xe9")


def test_file_that_is_not_yaml(write_pipeline, test_host):
    error = load_error(write_pipeline, test_host, "model: [unclosed\npasses: []\n")
    assert error.line == 2
    assert error.message.startswith("invalid YAML: while parsing a flow sequence expected ',' or ']'")


@pytest.mark.parametrize("text", ["- identity\n- scale\n", "just words\n", ""])
def test_file_that_is_not_a_mapping(write_pipeline, test_host, text):
    error = load_error(write_pipeline, test_host, text)
    assert error.message == "a pipeline file is a mapping with at least 'model:' and 'passes:'"


def test_yaml_tags_that_construct_objects_are_refused(write_pipeline, test_host):
    # safe_load semantics: no python/object tags, ever.
    error = load_error(write_pipeline, test_host, "model: !!python/object/apply:os.system ['true']\n")
    assert error.line == 1
    assert "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'" in error.message


def test_line_map_covers_nested_keys_and_list_items():
    data, lines = load_yaml_with_lines("a:\n  b: [1, 2]\n  c:\n    - x: 1\n    - y\n")
    assert data == {"a": {"b": [1, 2], "c": [{"x": 1}, "y"]}}
    assert lines[("a",)] == 1 and lines[("a", "b")] == 2 and lines[("a", "c", 0, "x")] == 4
    assert lines[("a", "c", 1)] == 5


def test_parse_without_a_file_uses_a_placeholder_name(test_host):
    with pytest.raises(PipelineError) as info:
        parse_pipeline("model: {source: 'python:x:y'}\nbogus: 1\n", test_host.get_pass)
    assert str(info.value).startswith("<pipeline>:2: unknown key 'bogus'")


def test_json_schema_has_every_pass_and_its_options(test_host):
    schema = pipeline_json_schema(e.obj for e in test_host.passes)

    json.dumps(schema)  # serializable as-is
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    names = schema["properties"]["passes"]["items"]["anyOf"][0]["enum"]
    assert {"identity", "scale", "raises", "writes_artifact"} <= set(names)
    scale = schema["$defs"]["scale_options"]
    assert scale["properties"]["factor"]["type"] == "number"
    assert scale["properties"]["mode"]["enum"] == ["outputs", "weights"]
    assert scale["additionalProperties"] is False
    assert schema["additionalProperties"] is False and "model" in schema["required"]
