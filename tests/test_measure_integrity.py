"""Measurement never changes the model: state_dict, hooks, buffers and training flags, also on errors."""

from __future__ import annotations

import hashlib

import pytest
import thop
import torch
from torch import nn

from optkit.config.pipeline import MeasureSpec
from optkit.measure.flops import count_macs
from optkit.measure.stage import measure


def fingerprint(model: nn.Module) -> dict[str, object]:
    """Everything measurement could disturb, in comparable form."""
    state = hashlib.sha256()
    for key, value in model.state_dict().items():
        state.update(key.encode())
        state.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return {
        "state_dict": state.hexdigest(),
        "buffers": [name for name, _ in model.named_buffers()],
        "training": [(name, m.training) for name, m in model.named_modules()],
        "hooks": [
            (name, tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks),
             tuple(id(h) for h in m._forward_hooks.values()))
            for name, m in model.named_modules()
        ],
        "attributes": [(name, sorted(vars(m))) for name, m in model.named_modules()],
    }


class Net(nn.Module):
    def __init__(self, fail: bool = False):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3))
        if self.fail:
            raise ValueError("forward failed on purpose")
        return self.head(x)


def mixed_mode_net(fail: bool = False) -> nn.Module:
    """Training flags that differ by submodule, and a hook of the user's own."""
    model = Net(fail)
    model.train()
    model.features[1].eval()  # a frozen BatchNorm inside a training model
    model.head.register_forward_hook(lambda m, args, out: None)
    with torch.no_grad():
        model.features[1].running_mean.uniform_()
    return model


def test_fingerprint_sees_what_thop_leaves_behind():
    """The check can fail: plain thop on the model itself leaves buffers and resets the flags."""
    model = mixed_mode_net()
    before = fingerprint(model)
    thop.profile(model, inputs=(torch.randn(1, 3, 16, 16),), verbose=False)
    assert fingerprint(model) != before


def test_measure_and_count_macs_leave_the_model_unchanged():
    model = mixed_mode_net()
    before = fingerprint(model)
    x = torch.randn(2, 3, 16, 16)
    count_macs(model, x)
    result = measure(model, x, MeasureSpec(warmup=1, iters=2), torch.device("cpu"))
    assert fingerprint(model) == before  # BatchNorm in training mode did not update its statistics
    assert result.metrics.macs == 2 * (8 * 14 * 14 * 27 + 8 * 4)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(result.outputs, model(x), rtol=0, atol=0)


def test_a_failing_forward_leaves_the_model_unchanged():
    model = mixed_mode_net(fail=True)
    before = fingerprint(model)
    with pytest.raises(ValueError, match="on purpose"):
        count_macs(model, torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="on purpose"):
        measure(model, torch.randn(1, 3, 16, 16), MeasureSpec(flops=False, warmup=0, iters=1), torch.device("cpu"))
    assert fingerprint(model) == before
    assert torch.backends.mha.get_fastpath_enabled()
