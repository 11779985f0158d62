"""scaled_l2, through prune_channels in a real pipeline."""

from __future__ import annotations

import torch

import optkit_example_plugin.criteria
from optkit.testing import run_pass


def test_scaled_l2_keeps_the_channels_it_scores_highest(tmp_path):
    run = run_pass("prune_channels", {"importance": "scaled_l2", "amount": 0.5}, tmp_path=tmp_path,
                   plugins=[optkit_example_plugin.criteria])
    assert run.stage["status"] == "ok"
    assert run.stage["details"]["importance"] == "scaled_l2"
    assert run.metrics["params"] < run.baseline["metrics"]["params"]


def test_installed_criterion_is_found_by_name(optkit_run_pass):
    run = optkit_run_pass("prune_channels", {"importance": "scaled_l2", "amount": 0.25})
    assert run.stage["details"]["importance"] == "scaled_l2"
    assert torch.isfinite(torch.tensor(run.metrics["params"], dtype=torch.float64))
