"""Hostile and mistaken configuration files: each gets a one-line error with file:line, fast and
in bounded memory (issue 12)."""

from __future__ import annotations

import os

import plugins_for_tests
import pytest
from test_cli import (
    errors,
    test_passes,  # noqa: F401  (pytest fixture)
)

from optkit.config.pipeline import MAX_INPUT_ELEMENTS, parse_pipeline
from optkit.config.sweep import parse_sweep
from optkit.config.yaml_lines import MAX_ALIASES, MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES, load_yaml_with_lines
from optkit.errors import PipelineError
from optkit.host.facade import Host


@pytest.fixture(scope="module")
def test_host() -> Host:
    return Host.with_plugins(plugins_for_tests)


def tiny(passes: str = "  - identity", **replace: str) -> str:
    text = plugins_for_tests.TINY_PIPELINE.format(passes=passes)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new, 1)
    return text


def parse_error(text: str, test_host: Host) -> str:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(text, test_host.get_pass)
    message = str(caught.value)
    assert "\x1b" not in message and "\x00" not in message
    return message


# --- bytes YAML refuses to read --------------------------------------------------------------------


def test_a_file_of_nul_bytes_is_an_error_with_its_line(test_host):
    message = parse_error("\x00" * 64, test_host)
    assert message.startswith("<pipeline>:1: invalid YAML: unacceptable character #x0000 (NUL)")


def test_an_escape_character_is_named_at_its_line_and_never_echoed(test_host):
    text = tiny(**{"device: cpu": "device: \"cpu\x1b[31m\""})
    message = parse_error(text, test_host)
    assert message.startswith("<pipeline>:4: invalid YAML: unacceptable character #x001b (ESC)")


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 50_000,
        "".join(" " * i + f"k{i}:\n" for i in range(1_000)),
        "a: " + "{b: " * 5_000 + "1" + "}" * 5_000,
    ],
    ids=["50000 [", "1000 nested keys", "5000 flow mappings"],
)
def test_deep_nesting_stops_at_the_depth_limit(test_host, text):
    message = parse_error(text, test_host)
    assert f"nested deeper than {MAX_DEPTH} levels" in message
    assert message.startswith("<pipeline>:")


def test_a_list_as_a_mapping_key_is_an_error_not_a_crash(test_host):
    text = tiny() + "? [a, b]: 1\n"
    message = parse_error(text, test_host)
    assert message == "<pipeline>:8: a mapping key must be a plain value (text or a number), not a list"


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_billion_laughs_stops_at_the_expansion_limit(test_host):
    # 9**9 values once expanded: a reader that expanded first and counted after would run out of
    # memory here instead of answering (no wall-clock bound: machines differ several-fold).
    message = parse_error(BILLION_LAUGHS, test_host)
    assert message.startswith("<pipeline>:")
    assert f"expands to more than {MAX_VALUES:,} values through aliases" in message


def test_too_many_aliases_is_an_error(test_host):
    text = tiny() + "x: &x 1\ny: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n"
    message = parse_error(text, test_host)
    assert message == f"<pipeline>:9: more than {MAX_ALIASES} aliases (*name); the limit keeps hostile files cheap to read"


def test_a_recursive_alias_is_an_error(test_host):
    message = parse_error("a: &a [1, *a]\n", test_host)
    assert message.startswith("<pipeline>:1: ") and "refers to a value that contains it" in message


def test_aliases_within_the_limits_still_work(test_host):
    text = tiny(**{"measure: {warmup: 1, iters: 3}": "measure: &m {warmup: 1, iters: 3}"})
    data, lines = load_yaml_with_lines("m: &m {warmup: 1}\nn: *m\n")
    assert data == {"m": {"warmup": 1}, "n": {"warmup": 1}} and lines[("n", "warmup")] == 1
    assert parse_pipeline(text, test_host.get_pass).measure.iters == 3


def test_a_file_over_the_size_limit_is_refused_without_reading_it_all(test_host, tmp_path):
    from optkit.config.pipeline import load_pipeline

    path = tmp_path / "big.yaml"
    with open(path, "w") as f:
        f.write(tiny())
        f.write(("# " + "x" * 1000 + "\n") * (MAX_FILE_BYTES // 1000 + 10))
    with pytest.raises(PipelineError) as caught:
        load_pipeline(path, test_host.get_pass)
    assert str(caught.value) == f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB, the limit for a pipeline file"


def test_a_device_file_that_never_ends_is_refused(test_host):
    from optkit.config.pipeline import load_pipeline

    with pytest.raises(PipelineError, match=r"^/dev/zero: not a regular file \(a character device\); a pipeline file is a file"):
        load_pipeline("/dev/zero", test_host.get_pass)


def test_a_fifo_as_a_sweep_or_pipeline_file_is_refused_without_blocking(test_host, tmp_path):
    """Before issue 25, opening a FIFO waited for a writer forever."""
    import threading

    from optkit.config.pipeline import load_pipeline
    from optkit.config.sweep import load_sweep

    os.mkfifo(tmp_path / "fifo.yaml")
    caught: list[str] = []

    def read() -> None:
        for load in (lambda p: load_pipeline(p, test_host.get_pass), load_sweep):
            try:
                load(tmp_path / "fifo.yaml")
            except PipelineError as exc:
                caught.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert len(caught) == 2, "reading a FIFO blocked"
    assert caught[0] == f"{tmp_path}/fifo.yaml: not a regular file (a FIFO); a pipeline file is a file"
    assert caught[1] == f"{tmp_path}/fifo.yaml: not a regular file (a FIFO); a sweep file is a file"


# --- YAML 1.1 booleans are not numbers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("replace", "line", "key"),
    [
        ({"device: cpu": "device: no"}, 4, "key 'device'"),
        ({"device: cpu": "device: cpu\nseed: on"}, 5, "key 'seed'"),
        ({"measure: {warmup: 1, iters: 3}": "measure: {warmup: 1, iters: yes}"}, 5, "key 'measure.iters'"),
        ({"measure: {warmup: 1, iters: 3}": "measure: {warmup: 1, iters: 3, threads: on}"}, 5, "key 'measure.threads'"),
        ({"[2, 3, 64, 64]": "[true, 3, 64, 64]"}, 3, "key 'model.input_shape.0'"),
        ({"  - identity": "  - scale: {factor: yes}"}, 7, "stage 1 (scale): option 'factor'"),
        ({"  - identity": "  - scale: {layers: [1, off]}"}, 7, "stage 1 (scale): option 'layers.1'"),
    ],
    ids=["device: no", "seed: on", "iters: yes", "threads: on", "input_shape true", "pass option", "option list"],
)
def test_yaml_booleans_are_not_taken_as_numbers(test_host, replace, line, key):
    message = parse_error(tiny(**replace), test_host)
    assert message.startswith(f"<pipeline>:{line}: {key}: YAML reads ")
    assert "is a boolean, not a number" in message


def test_yaml_booleans_still_set_boolean_options(test_host):
    text = tiny(**{"measure: {warmup: 1, iters: 3}": "measure: {warmup: 1, iters: 3, latency: off, flops: yes}"})
    measure = parse_pipeline(text, test_host.get_pass).measure
    assert measure.latency is False and measure.flops is True


def test_sweep_files_refuse_booleans_as_numbers_too():
    with pytest.raises(PipelineError, match=r"^<sweep>:3: key 'input_size': YAML reads "):
        parse_sweep("models: [torchvision:resnet18]\npipelines: {base: []}\ninput_size: on\n")


# --- merge keys ------------------------------------------------------------------------------------


def test_merge_keys_are_accepted_and_explicit_keys_win(test_host):
    text = tiny(**{"measure: {warmup: 1, iters: 3}": "measure:\n  <<: {warmup: 1, iters: 3}\n  iters: 5"})
    pipeline = parse_pipeline(text, test_host.get_pass)
    assert (pipeline.measure.warmup, pipeline.measure.iters) == (1, 5)


def test_merge_of_an_anchor_keeps_lines_and_duplicates_are_still_refused(test_host):
    data, lines = load_yaml_with_lines("base: &b {warmup: 1}\nm:\n  <<: *b\n  iters: 2\n")
    assert data["m"] == {"warmup": 1, "iters": 2} and lines[("m", "iters")] == 4
    with pytest.raises(PipelineError, match=r"^<x>:4: duplicate key 'iters' \(first given on line 3\)"):
        load_yaml_with_lines("base: &b {warmup: 1}\nm:\n  iters: 1\n  iters: 2\n  <<: *b\n", "<x>")


# --- input shape -----------------------------------------------------------------------------------


def test_an_input_shape_too_large_to_allocate_fails_validation(test_host):
    message = parse_error(tiny(**{"[2, 3, 64, 64]": "[1, 3, 100000, 100000]"}), test_host)
    assert message == (
        f"<pipeline>:3: key 'model.input_shape': Value error, 30,000,000,000 elements is more than the limit of "
        f"{MAX_INPUT_ELEMENTS:,} (4 GiB of float32), got [1, 3, 100000, 100000]"
    )


def test_an_input_shape_with_too_many_dimensions_fails_validation(test_host):
    message = parse_error(tiny(**{"[2, 3, 64, 64]": "[" + ", ".join(["1"] * 20) + "]"}), test_host)
    assert message.startswith("<pipeline>:3: key 'model.input_shape': List should have at most 8 items")


def test_info_refuses_a_huge_input_shape_with_exit_2(cli):
    result = cli("info", "python:plugins_for_tests:tiny_net", "-s", "1,3,100000,100000", "--no-latency")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: --input-shape 1,3,100000,100000: 30,000,000,000 elements is more than the limit of "
        f"{MAX_INPUT_ELEMENTS:,} (4 GiB of float32)\n"
    )


# --- sources ---------------------------------------------------------------------------------------


def test_validate_refuses_an_unknown_source_scheme(test_passes, cli, write_pipeline):  # noqa: F811
    path = write_pipeline(tiny(**{"python:plugins_for_tests:tiny_net": "timmm:resnet18"}))
    result = cli("validate", path)
    assert result.exit_code == 2
    assert errors(result).startswith(
        f"error: {path}:2: model.source: unknown model source scheme 'timmm'; registered: file, hf, python, torchvision"
    )


# --- issue 25, item 10: shapes, fp16 on the CPU --------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("[16]", "<pipeline>:3: key 'model.input_shape': List should have at least 2 items after validation, not 1"),
        ('["2", 3, 64, 64]', "<pipeline>:3: key 'model.input_shape.0': Value error, a size is an integer written as one (a str is not"),
        ("[2, 3, 64.0, 64]", "<pipeline>:3: key 'model.input_shape.2': Value error, a size is an integer written as one (a float is"),
    ],
)
def test_input_shapes_need_a_batch_dimension_and_real_integers(test_host, shape, message):
    assert parse_error(tiny(**{"[2, 3, 64, 64]": shape}), test_host).startswith(message)
