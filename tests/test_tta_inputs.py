"""TTA on models of several inputs: every image input is flipped and scaled alike, the others pass through."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from optkit import ExampleInputs, PassContext, StageError
from optkit_plugins.tta import TTA


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class SobelOfDifference(nn.Module):
    """A two-frame flow toy, exactly equivariant under flips: (u, v) = the horizontal and vertical
    gradients of frame2 - frame1. After a horizontal flip of both frames, u is minus the flipped u."""

    def __init__(self):
        super().__init__()
        kernel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("kernels", torch.stack([kernel, kernel.T]).unsqueeze(1))

    def forward(self, frame1: torch.Tensor, frame2: torch.Tensor) -> torch.Tensor:
        return F.conv2d((frame2 - frame1).mean(1, keepdim=True), self.kernels, padding=1)


class TwoFrameWidthFlow(nn.Module):
    """A field of (0.1 W, 0.05 H) in the frames' pixels; fails unless both frames have one size."""

    def forward(self, frame1: torch.Tensor, frame2: torch.Tensor) -> torch.Tensor:
        if frame1.shape != frame2.shape:
            raise RuntimeError(f"frames of different shapes {list(frame1.shape)} and {list(frame2.shape)}")
        b, _, h, w = frame1.shape
        field = torch.stack([torch.full((b, h, w), 0.1 * w), torch.full((b, h, w), 0.05 * h)], dim=1)
        return field + 0 * (frame1[:, :2] + frame2[:, :2])


class TaggedClassifier(nn.Module):
    """Logits of an image plus an embedding of an integer tag; remembers every tag it was called with."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 5)
        self.tags = nn.Embedding(4, 5)
        self.seen: list[torch.Tensor] = []

    def forward(self, image: torch.Tensor, tag: torch.Tensor) -> torch.Tensor:
        self.seen.append(tag)
        # The column mask makes the logits depend on where things are, so a flip changes them.
        columns = torch.linspace(0.0, 1.0, image.shape[-1], device=image.device)
        return self.head(self.features(image * columns)) + self.tags(tag)


def apply(model: nn.Module, inputs: ExampleInputs, tmp_path, **options):
    ctx = PassContext(
        device=torch.device("cpu"), example_input=inputs.first, example_inputs=inputs, output_dir=tmp_path, logger=logging.getLogger("test")
    )
    return TTA(TTA.Options(**options)).apply(model, ctx), ctx.details


def frames(size: int = 32) -> ExampleInputs:
    g = generator()
    return ExampleInputs.of((torch.randn(1, 3, size, size, generator=g), torch.randn(1, 3, size, size, generator=g)))


@torch.inference_mode()
def test_two_frames_are_flipped_together_and_the_flow_unflipped(tmp_path):
    model, inputs = SobelOfDifference(), frames()
    expected = inputs.call(model)
    wrapped, details = apply(model, inputs, tmp_path, scales=[1.0], flips=["horizontal", "vertical"], output="flow")

    assert details["outputs"] == [{"output": "output", "kind": "flow"}]
    assert len(details["branches"]) == 3
    assert float(expected[:, 0].abs().mean()) > 0.1  # a field worth keeping
    torch.testing.assert_close(inputs.call(wrapped), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@torch.inference_mode()
def test_two_frames_are_scaled_together_and_the_vectors_rescaled(tmp_path):
    model, inputs = TwoFrameWidthFlow(), frames()
    wrapped, details = apply(model, inputs, tmp_path, scales=[1.0, 0.5], flips=[], output="flow", stride=16)

    assert [b["input_hw"] for b in details["branches"]] == [[32, 32], [16, 16]]
    torch.testing.assert_close(inputs.call(wrapped), inputs.call(model), rtol=1e-6, atol=1e-6)


@torch.inference_mode()
def test_an_integer_input_passes_through_and_the_logits_are_the_mean_of_the_branches(tmp_path):
    model = TaggedClassifier().eval()
    image, tag = torch.randn(2, 3, 32, 32, generator=generator()), torch.tensor([1, 3])
    inputs = ExampleInputs.of(((image,), {"tag": tag}))
    wrapped, details = apply(model, inputs, tmp_path, scales=[1.0, 0.5], flips=["horizontal"], stride=16)
    assert details["outputs"] == [{"output": "output", "kind": "classification"}]

    model.seen.clear()
    got = inputs.call(wrapped)
    half = F.interpolate(image, scale_factor=0.5, mode="bilinear", align_corners=False, recompute_scale_factor=True)
    branches = [image, image.flip(-1), half, half.flip(-1)]  # a 16x16 branch is a multiple of stride 16: no padding
    by_hand = torch.stack([model(b, tag=tag) for b in branches]).mean(0)

    assert len(model.seen) == 2 * len(branches)
    assert all(seen is tag for seen in model.seen)  # the very tensor, neither copied nor transformed
    assert float((model(image, tag) - model(image, tag.flip(0))).abs().max()) > 1e-3  # the tag changes the logits
    torch.testing.assert_close(got, by_hand, rtol=1e-5, atol=1e-6)


def test_a_model_without_an_image_input_is_refused_before_it_runs(tmp_path):
    model = TaggedClassifier()
    inputs = ExampleInputs.of({"input_ids": torch.zeros(1, 16, dtype=torch.int64), "mask": torch.ones(1, 16, dtype=torch.int64)})
    with pytest.raises(StageError, match=r"tta augments image batches .*the model's inputs are input_ids \[1, 16\] int64, mask") as exc:
        apply(model, inputs, tmp_path)
    assert "\n" not in str(exc.value)
    assert model.seen == []


def test_image_inputs_of_different_sizes_are_refused_at_scales_other_than_1(tmp_path):
    model, g = SobelOfDifference(), generator()
    inputs = ExampleInputs.of((torch.randn(1, 3, 32, 32, generator=g), torch.randn(1, 3, 32, 32, generator=g)))
    uneven = ExampleInputs.of((torch.randn(1, 3, 32, 32, generator=g), torch.randn(1, 3, 16, 16, generator=g)))
    with pytest.raises(StageError, match=r"image inputs of different sizes cannot be scaled .*input0 \[32, 32\], input1 \[16, 16\]"):
        apply(model, uneven, tmp_path, scales=[1.0, 0.5])
    # Flips alone transform each image input as it is; inputs of one size scale together.
    pooled = PooledPair()
    wrapped, _ = apply(pooled, uneven, tmp_path, scales=[1.0], flips=["horizontal"])
    with torch.inference_mode():
        torch.testing.assert_close(uneven.call(wrapped), uneven.call(pooled), rtol=1e-5, atol=1e-6)
    _, details = apply(model, inputs, tmp_path, scales=[1.0, 0.5], output="flow")
    assert len(details["branches"]) == 4


class PooledPair(nn.Module):
    """Logits from two images of any sizes, unchanged by flips."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.mean((2, 3)) + b.mean((2, 3))
