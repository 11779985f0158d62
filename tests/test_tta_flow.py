"""TTA on vector fields: a declared flow is un-flipped and rescaled as vectors; an undeclared dense
output whose channels change under the flip is flagged."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from optkit import PassContext
from optkit_plugins.tta import TTA


class SobelFlow(nn.Module):
    """An exactly flip-equivariant vector field: (u, v) = the image's horizontal and vertical gradients.

    Under a horizontal flip, u of the flipped image is minus the flipped u: averaged as a scalar
    map, u cancels."""

    def __init__(self):
        super().__init__()
        kernel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("kernels", torch.stack([kernel, kernel.T]).unsqueeze(1))

    def forward(self, x):
        gray = x.mean(1, keepdim=True)
        return nn.functional.conv2d(gray, self.kernels, padding=1)


class WidthFlow(nn.Module):
    """A field whose vectors are a share of the input's size, in its pixels: (0.1 W, 0.05 H) everywhere."""

    def forward(self, x):
        b, _, h, w = x.shape
        return torch.stack([torch.full((b, h, w), 0.1 * w), torch.full((b, h, w), 0.05 * h)], dim=1) + 0 * x[:, :2]


def images(size: int = 64) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def apply(model, x, tmp_path, **options):
    ctx = PassContext(device=torch.device("cpu"), example_input=x, output_dir=tmp_path, logger=logging.getLogger("test"))
    return TTA(TTA.Options(**options)).apply(model, ctx), ctx.details


@torch.inference_mode()
def test_declared_flow_is_unflipped_as_vectors(tmp_path):
    model, x = SobelFlow().eval(), images()
    expected = model(x)
    wrapped, details = apply(model, x, tmp_path, scales=[1.0], flips=["horizontal", "vertical"], output="flow")
    assert details["outputs"] == [{"output": "output", "kind": "flow"}]
    got = wrapped(x)
    assert float(expected[:, 0].abs().mean()) > 0.1  # a field worth keeping
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@torch.inference_mode()
def test_declared_flow_is_rescaled_by_the_scale(tmp_path):
    model, x = WidthFlow(), images()
    wrapped, _ = apply(model, x, tmp_path, scales=[1.0, 0.5], flips=[], output="flow")
    torch.testing.assert_close(wrapped(x), model(x), rtol=1e-6, atol=1e-6)


def test_flow_needs_two_channels(tmp_path):
    conv = nn.Conv2d(3, 3, 1).eval()
    with pytest.raises(Exception, match=r"declared flow but has 3 channels, not 2 \(u, v\)"):
        apply(conv, images(), tmp_path, scales=[1.0], output="flow")


def test_an_undeclared_vector_field_is_flagged(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _, details = apply(SobelFlow().eval(), images(), tmp_path, scales=[1.0], flips=["horizontal"])
    assert details["outputs"] == [{"output": "output", "kind": "dense"}]
    assert len(details["warnings"]) == 1
    assert details["warnings"][0].startswith("output output: under a horizontal flip channels [0] change sign")
    assert "declare `tta: {output: flow}`" in caplog.text


def test_a_scalar_map_is_not_flagged(tmp_path):
    torch.manual_seed(0)
    pointwise = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    _, details = apply(pointwise, images(), tmp_path, scales=[1.0], flips=["horizontal", "vertical"])
    assert "warnings" not in details
