"""The contract between optkit and plugin code (issue 29): what a dataset loader or model source
raises for the user's wrong input (``PipelineError``: exit 2, the entry named) and what is a bug in
the plugin (anything else: exit 1, the plugin named); ``optkit validate`` checks every scheme with
its line; ``optkit schema`` lists the installed schemes; the testing kit asserts all of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import npz_plugin
import numpy as np
import pytest
import yaml
from fake_distributions import FakeDistribution, install_fake_distributions

from optkit.data.sources import DatasetRequest
from optkit.errors import PipelineError
from optkit.testing import (
    load_dataset,
    load_source,
    raises_plugin_bug,
    raises_user_error,
    run_pass,
)

NPZ = FakeDistribution("optkit-npz", "0.3", {"npz": "npz_plugin"})


@pytest.fixture
def installed(monkeypatch, tmp_path):
    install_fake_distributions(monkeypatch, NPZ)
    monkeypatch.chdir(tmp_path)


def write_npz(path: Path, n: int = 6) -> Path:
    np.savez(path, x=np.random.default_rng(0).random((n, 3, 64, 64), dtype=np.float32), y=np.arange(n) % 10)
    return path


def pipeline(tmp_path: Path, data: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(
        "model:\n"
        "  source: python:optkit.testing:tiny_convnet\n"
        "  input_shape: [2, 3, 64, 64]\n"
        "device: cpu\n"
        "measure: {warmup: 0, iters: 1, latency: false}\n"
        f"data:\n{data}"
        "passes: []\n"
    )
    return path


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# --- dataset loaders ---------------------------------------------------------------------------------


def test_a_loader_refusing_its_input_exits_2_naming_the_entry_and_scheme(installed, cli, tmp_path):
    result = cli("run", pipeline(tmp_path, "  eval: npz:missing.npz\n"), "-o", "out")

    assert result.exit_code == 2
    assert one_error_line(result) == f"error: data.eval (npz:missing.npz): no such file {tmp_path}/missing.npz"
    assert not (tmp_path / "out").exists()  # nothing was run


def test_a_loader_raising_anything_else_exits_1_naming_the_plugin(installed, cli, tmp_path):
    write_npz(tmp_path / "d.npz")
    result = cli("run", pipeline(tmp_path, "  eval: buggy:d.npz\n"), "-o", "out")

    assert result.exit_code == 1
    assert one_error_line(result).startswith(
        "error: data.eval (buggy:d.npz): the 'buggy' dataset loader of plugin 'npz' (optkit-npz 0.3) raised KeyError: "
    )
    assert "a bug in that plugin" in result.stderr
    assert "Traceback" in cli("--debug", "run", pipeline(tmp_path, "  eval: buggy:d.npz\n"), "-o", "out").stderr


def test_a_loader_that_works_gives_accuracy(installed, cli, tmp_path):
    write_npz(tmp_path / "d.npz")
    result = cli("run", pipeline(tmp_path, "  eval: {source: npz:d.npz, batch_size: 4}\n"), "-o", "out", "--json")

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["stages"][0]["metrics"]["accuracy"]["n"] == 6


def test_the_python_scheme_calls_the_users_code_so_its_failure_is_the_users(tmp_path):
    (tmp_path / "my_data.py").write_text("def broken():\n    raise ValueError('no labels in this folder')\n")
    with raises_user_error(r"^data.eval: my_data:broken raised ValueError: no labels in this folder$"):
        load_dataset("python:my_data:broken", base_dir=tmp_path)


# --- model sources ----------------------------------------------------------------------------------


def test_a_source_refusing_its_input_names_the_source():
    with raises_user_error(r"^model.source \(toy:7\): only toy:1 to toy:4 exist$"):
        load_source("toy:7", plugins=[ToySources()])


def test_a_source_raising_anything_else_is_a_plugin_bug():
    with raises_plugin_bug("plugin 'ToySources-", match=r"^model.source \(toy:x\): .* raised ValueError"):
        load_source("toy:x", plugins=[ToySources()])


class ToySources:
    from optkit.host.hookspecs import hookimpl

    @hookimpl
    def optkit_register_sources(self, register):
        def load_toy(request):
            import torch

            size = int(request.target)  # ValueError for toy:x: a bug (the loader should check)
            if not 1 <= size <= 4:
                raise PipelineError("only toy:1 to toy:4 exist")
            return torch.nn.Linear(size, size)

        register("toy", load_toy)


# --- the testing kit itself -------------------------------------------------------------------------


def test_the_kit_asserts_the_contract_and_fails_when_it_is_broken(tmp_path):
    with raises_user_error(r"no such file"):
        load_dataset("npz:missing.npz", base_dir=tmp_path, plugins=[npz_plugin])
    with pytest.raises(AssertionError, match="does not name the plugin 'another'"):
        with raises_plugin_bug("another"):
            load_dataset("buggy:x.npz", base_dir=write_npz(tmp_path / "x.npz").parent, plugins=[npz_plugin])
    with pytest.raises(AssertionError, match="does not match"):
        with raises_user_error("something else"):
            load_dataset("npz:missing.npz", base_dir=tmp_path, plugins=[npz_plugin])


def test_load_dataset_gives_the_samples_as_a_run_reads_them(tmp_path):
    write_npz(tmp_path / "d.npz", n=5)
    loaded = load_dataset("npz:d.npz", base_dir=tmp_path, plugins=[npz_plugin])
    inputs, label = loaded.samples[4]
    assert len(loaded.samples) == 5 and tuple(inputs.shape) == (3, 64, 64) and label == 4


def test_run_pass_creates_the_folders_it_is_given(tmp_path):
    run = run_pass("fuse_bn", tmp_path=tmp_path / "sub" / "deeper", measure={"warmup": 0, "iters": 1, "latency": False})
    assert run.stage["status"] == "ok" and (tmp_path / "sub" / "deeper" / "pipeline.yaml").is_file()


def test_dataset_requests_resolve_to_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    request = DatasetRequest("x", spec=None, role="eval", transform=lambda image: image, base_dir=Path("pipelines"))  # type: ignore[arg-type]
    assert request.resolve("../data/missing.npz") == tmp_path / "data" / "missing.npz"


# --- optkit validate and optkit schema --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "line", "option"),
    [("  eval: npzz:d.npz\n", 7, "data.eval"), ("  train:\n    batch_size: 4\n    source: npzz:d.npz\n", 9, "data.train")],
)
def test_validate_refuses_an_unknown_dataset_scheme_at_its_line(installed, cli, tmp_path, data, line, option):
    path = pipeline(tmp_path, data)
    result = cli("validate", path)

    assert result.exit_code == 2
    assert one_error_line(result) == f"error: {path}:{line}: {option}: unknown dataset source scheme 'npzz'; did you mean 'npz'?"


def test_validate_accepts_installed_schemes(installed, cli, tmp_path):
    result = cli("validate", pipeline(tmp_path, "  eval: npz:d.npz\n"))
    assert result.exit_code == 0, result.stderr


def test_the_schema_names_the_installed_schemes_so_editors_complete_and_check_them(installed, cli, tmp_path):
    schema = json.loads(cli("schema").stdout)
    dataset_source = schema["$defs"]["DatasetSpec"]["properties"]["source"]
    assert "npz:" in dataset_source["examples"] and "imagefolder:" in dataset_source["examples"]
    assert "torchvision:" in schema["$defs"]["ModelSpec"]["properties"]["source"]["examples"]

    def document(data: str) -> dict:
        return yaml.safe_load(pipeline(tmp_path, data).read_text())

    jsonschema.validate(document("  eval: npz:d.npz\n  train: {source: 'imagefolder:train', batch_size: 8}\n"), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document("  eval: npzz:d.npz\n"), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**document("  eval: npz:d.npz\n"), "passes": ["fuse_bm"]}, schema)
