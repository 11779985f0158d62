"""Model sources (torchvision:, file:, python:, plugin schemes) and whole pipelines through the CLI."""

from __future__ import annotations

import copy
import json
import os
import textwrap
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from optkit import hookimpl
from optkit.config.pipeline import ModelSpec
from optkit.errors import CheckpointError, PipelineError
from optkit.host.facade import Host
from optkit.models.sources import SourceRequest

INPUT = (1, 3, 64, 64)


def seeded_resnet18(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(**kwargs).eval()


def outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(*INPUT, generator=torch.Generator().manual_seed(1)))


def spec(**fields) -> ModelSpec:
    return ModelSpec(input_shape=list(INPUT), **fields)


# --- torchvision: -----------------------------------------------------------------------------


def test_torchvision_without_weights_and_with_kwargs(host: Host, tmp_path: Path) -> None:
    model, details = host.load_model(spec(source="torchvision:resnet18", kwargs={"num_classes": 7}), tmp_path)
    assert isinstance(model, torchvision.models.ResNet) and model.fc.out_features == 7 and not model.training
    assert details == {"source": {"torchvision": "resnet18", "weights": None}}


def test_torchvision_unknown_model_and_unknown_weights_name(host: Host, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="torchvision has no model 'resnet181'; did you mean 'resnet18'"):
        host.load_model(spec(source="torchvision:resnet181"), tmp_path)
    with pytest.raises(PipelineError, match=r"'IMAGENET' is not a weights name of resnet18 \(known: DEFAULT, IMAGENET1K_V1\)"):
        host.load_model(spec(source="torchvision:resnet18", weights="IMAGENET"), tmp_path)


def test_torchvision_weights_that_cannot_be_downloaded_say_how_to_give_a_file(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(PipelineError) as info:
        host.load_model(spec(source="torchvision:resnet18", weights="DEFAULT"), tmp_path)
    message = str(info.value)
    assert "could not download" in message and "no network" in message
    assert "weights: {path: resnet18.pth}" in message


def test_torchvision_kwargs_that_contradict_the_weights_are_named(host: Host, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"model\.kwargs: resnet18: .*num_classes"):
        host.load_model(spec(source="torchvision:resnet18", weights="DEFAULT", kwargs={"num_classes": 10}), tmp_path)


# --- file: ------------------------------------------------------------------------------------


def test_file_source_needs_the_opt_in_and_then_loads_the_whole_model(host: Host, tmp_path: Path) -> None:
    original = seeded_resnet18()
    torch.save(original, tmp_path / "whole.pt")

    with pytest.raises(CheckpointError, match=r"model\.source: .*refused to unpickle GLOBAL torchvision\.models\.resnet\.ResNet"):
        host.load_model(spec(source="file:whole.pt"), tmp_path)

    model, details = host.load_model(spec(source="file:whole.pt", trust_checkpoint=True), tmp_path)
    torch.testing.assert_close(outputs(model), outputs(original), rtol=0, atol=0)
    assert details["source"]["file"]["class"] == "torchvision.models.resnet.ResNet"
    assert details["source"]["file"]["trusted"] is True and details["source"]["file"]["saved_on"] == ["cpu"]


def test_file_source_unwraps_a_half_precision_yolov5_checkpoint(host: Host, tmp_path: Path) -> None:
    original = seeded_resnet18()
    torch.save({"epoch": -1, "model": copy.deepcopy(original).half(), "ema": None, "optimizer": None}, tmp_path / "best.pt")

    model, details = host.load_model(spec(source="file:best.pt", trust_checkpoint=True), tmp_path)

    assert details["source"]["file"]["unwrapped"] == "model"
    assert details["source"]["file"]["converted"] == "torch.float16 -> torch.float32"
    # The weights are exactly the saved half-precision values, now in float32.
    torch.testing.assert_close(outputs(model), outputs(copy.deepcopy(original).half().float()), rtol=0, atol=0)


def test_file_source_holding_only_weights_points_to_weights(host: Host, tmp_path: Path) -> None:
    torch.save(seeded_resnet18().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match=r"holds a state dict \(122 tensors\), not a whole model; .* weights: sd\.pt"):
        host.load_model(spec(source="file:sd.pt"), tmp_path)


# --- python: and plugin schemes ---------------------------------------------------------------


def test_python_source_beside_the_pipeline_file_with_kwargs(host: Host, tmp_path: Path) -> None:
    (tmp_path / "optkit_test_beside_models.py").write_text(textwrap.dedent("""
        from torch import nn

        def build(width=4, classes=3):
            return nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))
    """))
    model, details = host.load_model(spec(source="python:optkit_test_beside_models:build", kwargs={"width": 6, "classes": 5}), tmp_path
    )
    assert model[0].out_channels == 6 and model[3].out_features == 5
    assert details["source"] == {"python": "optkit_test_beside_models:build"}
    assert str(tmp_path) not in __import__("sys").path

    with pytest.raises(PipelineError, match=r"model\.kwargs: optkit_test_beside_models:build: .*depth"):
        host.load_model(spec(source="python:optkit_test_beside_models:build", kwargs={"depth": 2}), tmp_path)
    with pytest.raises(PipelineError, match="cannot import 'no_such_module_here'"):
        host.load_model(spec(source="python:no_such_module_here:build"), tmp_path)


class _ToySources:
    """A plugin that adds the ``toy:`` scheme, and ``odd:`` whose loader returns no module."""

    @hookimpl
    def optkit_register_sources(self, register):
        def load_toy(request: SourceRequest) -> nn.Module:
            request.details["source"] = {"toy": request.target}
            return nn.Linear(3, int(request.target))

        register("toy", load_toy)
        register("odd", lambda request: "a string")


def test_plugins_add_schemes_and_unknown_schemes_are_named(tmp_path: Path) -> None:
    host = Host.with_plugins(_ToySources())
    model, details = host.load_model(spec(source="toy:4"), tmp_path)
    assert isinstance(model, nn.Linear) and model.out_features == 4 and details == {"source": {"toy": "4"}}
    with pytest.raises(PipelineError, match="unknown model source scheme 'tochvision'; did you mean 'torchvision'"):
        host.load_model(spec(source="tochvision:resnet18"), tmp_path)


def test_a_loader_that_returns_no_module_is_named(tmp_path: Path) -> None:
    host = Host.with_plugins(_ToySources())
    with pytest.raises(PipelineError, match=r"the 'odd' loader of plugin .* returned str, not an nn\.Module"):
        host.load_model(spec(source="odd:x"), tmp_path)


def test_a_weights_name_is_refused_where_only_torchvision_understands_it(host: Host, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"model\.weights: 'DEFAULT' is not a file path .* only torchvision: sources"):
        host.load_model(spec(source="python:plugins_for_tests:tiny_net", weights="DEFAULT"), tmp_path)


# --- whole pipelines through the CLI ----------------------------------------------------------


PIPELINE = """\
model:
  source: {source}
  input_shape: [1, 3, 64, 64]
{extra}device: cpu
measure: {{latency: false}}
passes: []
"""


def test_cli_run_loads_a_ddp_checkpoint_freezes_and_reports_the_account(cli, write_pipeline, tmp_path: Path) -> None:
    original = seeded_resnet18(0, num_classes=10)
    torch.save({"model": nn.DataParallel(original).state_dict(), "epoch": 12}, tmp_path / "ddp.pt")
    pipeline = write_pipeline(PIPELINE.format(
        source="torchvision:resnet18",
        extra="  kwargs: {num_classes: 10}\n  weights: {path: ddp.pt, exclude: [fc]}\n  freeze: all_but_head\n",
    ))

    result = cli("run", pipeline, "--output", tmp_path / "run", "--verbose")

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    weights = report["stages"][0]["details"]["weights"]
    assert weights["unwrapped"] == "model" and weights["prefixes_stripped"] == ["module."]
    assert weights["tensors"]["loaded"] == 120 and weights["tensors"]["excluded"] == 2
    assert len(weights["keys"]["loaded"]) == 120 and weights["keys"]["excluded"] == ["fc.weight", "fc.bias"]
    freeze = report["stages"][0]["details"]["freeze"]
    assert freeze["head"] == "fc" and freeze["trainable"] == ["fc.weight", "fc.bias"]
    assert report["pipeline"]["model"]["list_keys"] is True
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=False)  # written by this run
    torch.testing.assert_close(saved.layer4[1].conv2.weight, original.layer4[1].conv2.weight, rtol=0, atol=0)
    assert "weights" in (tmp_path / "run" / "report.md").read_text()


def test_cli_refuses_a_whole_module_without_the_opt_in_and_runs_with_it(cli, write_pipeline, tmp_path: Path) -> None:
    torch.save(seeded_resnet18(), tmp_path / "whole.pt")
    pipeline = write_pipeline(PIPELINE.format(source="file:whole.pt", extra=""))

    refused = cli("run", pipeline, "--output", tmp_path / "refused")
    assert refused.exit_code == 2
    assert "refused to unpickle GLOBAL torchvision.models.resnet.ResNet" in refused.output
    assert "--trust-checkpoint" in refused.output and "trust_checkpoint: true" in refused.output

    trusted = cli("run", pipeline, "--output", tmp_path / "trusted", "--trust-checkpoint")
    assert trusted.exit_code == 0, trusted.output
    report = json.loads((tmp_path / "trusted" / "report.json").read_text())
    assert report["pipeline"]["model"]["trust_checkpoint"] is True
    assert report["stages"][0]["details"]["source"]["file"]["class"] == "torchvision.models.resnet.ResNet"


class _CreatesAFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cli_refuses_a_malicious_checkpoint_and_nothing_runs(cli, write_pipeline, tmp_path: Path) -> None:
    marker = tmp_path / "created-by-the-pickle"
    state = seeded_resnet18().state_dict()
    torch.save({"model": state, "hook": _CreatesAFile(marker)}, tmp_path / "evil.pt")
    pipeline = write_pipeline(PIPELINE.format(source="torchvision:resnet18", extra="  weights: evil.pt\n"))

    result = cli("run", pipeline, "--output", tmp_path / "run")

    assert result.exit_code == 2
    assert "model.weights:" in result.output and "refused to unpickle GLOBAL" in result.output
    assert not marker.exists()
    assert not (tmp_path / "run" / "report.json").exists()
