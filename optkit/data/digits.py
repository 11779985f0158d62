"""The digits task: a real data set and a real trained model that ship with optkit.

No weights or data sets can be downloaded on many machines, and a random model makes accuracy
meaningless. scikit-learn ships a real data set: :func:`sklearn.datasets.load_digits` (1,797
handwritten digits, 8×8 grey levels, 10 classes). :func:`digits_imagefolder` writes it as an
ImageFolder (``train/`` and ``val/``, one folder per class, RGB PNGs upscaled to ``size``), and
:func:`digits_cnn` is a small residual CNN whose trained weights ship with optkit
(``pretrained=True``; ``examples/train_digits.py`` trains them again).

Example:
    >>> folders = digits_imagefolder("data/digits", size=32)        # doctest: +SKIP
    >>> model = digits_cnn(pretrained=True)                          # doctest: +SKIP

On the command line: ``python -m optkit.data data/digits --size 32``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from optkit.errors import PipelineError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DIGITS_CLASSES",
    "DIGITS_WEIGHTS",
    "DIGITS_WIDTHS",
    "DigitsFolders",
    "digits_imagefolder",
    "DigitsCNN",
    "ResidualBlock",
    "conv_bn_relu",
    "digits_cnn",
]

log = logging.getLogger(__name__)

#: Class folder names, in label order (ImageFolder sorts folder names: "0" ... "9").
DIGITS_CLASSES = tuple(str(d) for d in range(10))
#: The trained weights of ``digits_cnn()`` (safetensors), shipped with optkit.
DIGITS_WEIGHTS = Path(__file__).with_name("digits_cnn.safetensors")
#: Channels of each stage of ``digits_cnn()``.
DIGITS_WIDTHS = (16, 32, 48)
#: Written beside ``train/`` and ``val/``: the settings the folder was written with.
_MANIFEST = "digits.json"


@dataclass(frozen=True)
class DigitsFolders:
    """Where :func:`digits_imagefolder` wrote the data set.

    Attributes:
        root: the folder holding ``train/``, ``val/`` and ``digits.json``.
        train: the training split (an ImageFolder: one sub-folder per class).
        val: the validation split.
        counts: ``{"train": n, "val": n}``.
    """

    root: Path
    train: Path
    val: Path
    counts: dict[str, int]


def digits_imagefolder(root: str | Path, size: int = 32, *, val_fraction: float = 0.2, seed: int = 0) -> DigitsFolders:
    """Write scikit-learn's digits as an ImageFolder under ``root`` (``train/`` and ``val/``).

    Each 8×8 image (grey levels 0-16) is scaled to 0-255, upscaled bilinearly to ``size`` × ``size``
    and saved as an RGB PNG named by its index in ``load_digits`` (``val/3/00042.png``). The split
    is stratified by class and seeded, so it is the same on every machine. A folder already
    written with the same settings is reused as it is.

    Args:
        root: the folder to write (created).
        size: the side of the square images (8 keeps the original pixels).
        val_fraction: the share of each class that goes to ``val/``.
        seed: seed of the split.

    Returns:
        The folders and how many images each holds.

    Raises:
        PipelineError: scikit-learn is not installed, or ``root`` holds something else.
    """
    root = Path(root)
    settings = {"size": size, "val_fraction": val_fraction, "seed": seed}
    manifest = root / _MANIFEST
    if manifest.is_file():
        written = json.loads(manifest.read_text(encoding="utf-8"))
        if written.get("settings") == settings:
            return _folders(root, written["counts"])
        raise PipelineError(f"{root} holds digits written with {written.get('settings')}, not {settings}; use another folder")
    if root.exists() and any(root.iterdir()):
        raise PipelineError(f"{root} is not empty and holds no digits data set; use another folder")
    images, labels = _load_digits()
    train_index, val_index = _split(labels, val_fraction, seed)
    counts = {}
    for split, indices in (("train", train_index), ("val", val_index)):
        for index in indices:
            folder = root / split / DIGITS_CLASSES[labels[index]]
            folder.mkdir(parents=True, exist_ok=True)
            _image(images[index], size).save(folder / f"{index:05d}.png")
        counts[split] = len(indices)
    manifest.write_text(json.dumps({"settings": settings, "counts": counts}, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %d train and %d val digits (%dx%d) to %s", counts["train"], counts["val"], size, size, root)
    return _folders(root, counts)


def _folders(root: Path, counts: dict[str, int]) -> DigitsFolders:
    return DigitsFolders(root=root, train=root / "train", val=root / "val", counts=dict(counts))


def _load_digits() -> tuple[list, list[int]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise PipelineError("the digits data set comes from scikit-learn, which is not installed: pip install 'optkit[testing]'") from exc
    digits = load_digits()
    return list(digits.images), [int(y) for y in digits.target]


def _split(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(range(len(labels)), test_size=val_fraction, random_state=seed, stratify=labels)
    return sorted(train), sorted(val)


def _image(pixels: Sequence[Sequence[float]], size: int) -> Image.Image:
    import numpy as np
    from PIL import Image

    grey = Image.fromarray(np.clip(np.asarray(pixels) * (255.0 / 16.0), 0, 255).round().astype(np.uint8))  # 2-D uint8: mode "L"
    if size != grey.width:
        grey = grey.resize((size, size), Image.Resampling.BILINEAR)
    return grey.convert("RGB")


class ResidualBlock(nn.Module):
    """Two 3×3 Conv-BN with the input added back, then ReLU (channels unchanged)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + x)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """A 3×3 convolution (no bias), BatchNorm and ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DigitsCNN(nn.Module):
    """A small residual CNN (see :func:`digits_cnn`)."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = DIGITS_WIDTHS) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(3, widths[0], stride=2), ResidualBlock(widths[0])]
        for cin, cout in itertools.pairwise(widths):
            layers += [conv_bn_relu(cin, cout, stride=2), ResidualBlock(cout)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def digits_cnn(num_classes: int = 10, widths: Sequence[int] = DIGITS_WIDTHS, pretrained: bool = False) -> DigitsCNN:
    """The digits model: a small residual CNN, traceable by ``torch.fx``, plain ``nn`` modules only.

    A stride-2 Conv-BN-ReLU stem (the digits are 8×8 at heart: full resolution buys nothing),
    then for each width a :class:`ResidualBlock`, with a stride-2
    Conv-BN-ReLU between widths; global average pooling and a linear head. Inputs are
    ``[batch, 3, H, W]`` images in [0, 1] (no normalization); the shipped weights were trained
    on 32×32 digits from :func:`digits_imagefolder`.

    Args:
        num_classes: outputs of the head.
        widths: channels of each stage.
        pretrained: load the shipped weights (:data:`DIGITS_WEIGHTS`; default architecture only).

    Returns:
        The model, in eval mode (initialized from seed 0 when not pretrained).
    """
    if pretrained and (num_classes, tuple(widths)) != (10, DIGITS_WIDTHS):
        raise ValueError(f"pretrained=True needs the default architecture (num_classes=10, widths={DIGITS_WIDTHS})")
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = DigitsCNN(num_classes, tuple(widths))
    finally:
        torch.random.set_rng_state(state)  # leave the caller's random stream alone
    if pretrained:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(DIGITS_WEIGHTS)))
    return model.eval()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m optkit.data ROOT [--size N]``: write the digits ImageFolder."""
    parser = argparse.ArgumentParser(description="Write scikit-learn's digits as an ImageFolder (train/ and val/).")
    parser.add_argument("root", type=Path)
    parser.add_argument("--size", type=int, default=32, help="side of the square RGB images (default 32)")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folders = digits_imagefolder(args.root, args.size, val_fraction=args.val_fraction, seed=args.seed)
    print(f"{folders.root}: {folders.counts['train']} train, {folders.counts['val']} val images ({args.size}x{args.size} RGB)")
    return 0
