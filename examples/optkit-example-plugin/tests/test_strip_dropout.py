"""strip_dropout, tested through the optkit host with optkit.testing."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from optkit import PassContext, PipelineError
from optkit.testing import run_pass
from optkit_example_plugin.strip_dropout import StripDropout


def test_installed_pass_runs_through_the_host(optkit_run_pass):
    # The pass is found by name, through the installed entry point: no plugins= argument.
    run = optkit_run_pass("strip_dropout", model_kwargs={"dropout": 0.5})

    assert run.stage["status"] == "ok"
    assert run.stage["details"] == {"replaced": ["8"], "count": 1}
    assert run.drift["max_abs"] == 0.0  # dropout is the identity in eval mode: bit-for-bit equal
    assert run.metrics["params"] == run.baseline["metrics"]["params"]
    assert not any(isinstance(m, nn.Dropout) for m in run.load_model().modules())


def test_only_the_selected_kinds_are_replaced(tmp_path):
    run = run_pass(StripDropout, {"kinds": ["Dropout2d"]}, tmp_path=tmp_path, model_kwargs={"dropout": 0.5})

    assert run.stage["details"]["count"] == 0
    assert any(isinstance(m, nn.Dropout) for m in run.load_model().modules())


def test_unknown_kind_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match=r"stage 1 \(strip_dropout\): option 'kinds.0'.*'Dropout2D'"):
        run_pass(StripDropout, {"kinds": ["Dropout2D"]}, tmp_path=tmp_path)


def test_nested_dropouts_are_found(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Dropout(0.2), nn.ReLU()), nn.AlphaDropout(0.1)).eval()
    x = torch.randn(3, 4)
    expected = model(x)

    ctx = PassContext(torch.device("cpu"), x, output_dir=tmp_path, logger=logging.getLogger("test"))
    result = StripDropout().apply(model, ctx)

    assert ctx.details["replaced"] == ["1.0", "2"]
    torch.testing.assert_close(result(x), expected, rtol=0, atol=0)
