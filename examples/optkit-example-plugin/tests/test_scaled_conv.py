"""The module rule: fuse_bn folds each BatchNorm after a ScaledConv, with outputs unchanged."""

from __future__ import annotations

import torch
from torch import nn

from optkit.testing import run_pass
from optkit_example_plugin.scaled_conv import ScaledConv, fold_bn_into_scaled_conv

SCALED_STEM = "example:scaled_stem"  # the example's own model source (models.py)


def test_fuse_bn_folds_every_batchnorm_after_a_scaled_conv(tmp_path):
    # fuse_bn gets the installed module rules (ctx.module_rules): the entry point brings this one.
    run = run_pass("fuse_bn", tmp_path=tmp_path, source=SCALED_STEM, model_kwargs={"randomize": True}, input_shape=(2, 3, 32, 32))

    details = run.stage["details"]
    assert details["batchnorms_folded"] == 2 and details["skipped"] == [] and details["unpaired_bn"] == {}
    assert {entry["rule"] for entry in details["fused"]} == {"optkit_example_plugin.scaled_conv.ScaledConv"}
    model = run.load_model()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert run.drift["max_abs"] < 1e-4  # logits of magnitude ~1: equal but for float rounding


def test_the_fold_computes_the_pair():
    torch.manual_seed(0)
    conv, bn = ScaledConv(3, 4), nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        conv.scale.fill_(1.7)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = bn(conv(x))
        fold_bn_into_scaled_conv(conv, bn)
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
