"""Train the digits CNN (``optkit.data.digits.digits_cnn``) on scikit-learn's digits and save its weights.

The data are the ImageFolder that ``optkit.data.digits.digits_imagefolder`` writes (32×32 RGB PNGs, a
seeded 80/20 split), read through the same transform ``optkit run`` uses for ``data:`` (no
``transform`` keys: images as float in [0, 1]), so the accuracy printed here is the accuracy a
pipeline reports for the baseline. The shipped weights (``optkit/data/digits_cnn.safetensors``)
were made with the defaults::

    python examples/train_digits.py                     # about a minute on two quiet cores
    python examples/train_digits.py --output runs/digits_cnn.safetensors --epochs 5

Then point a pipeline at them: ``model: {source: python:optkit.data:digits_cnn, weights: PATH}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.transforms import v2

from optkit.config.data import TransformSpec
from optkit.data.digits import DIGITS_WEIGHTS, digits_cnn, digits_imagefolder
from optkit.data.sources import image_folder
from optkit.data.transforms import build_transform

ROOT = Path(__file__).resolve().parent


def load_split(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of an ImageFolder split as one tensor, with its labels."""
    dataset = image_folder(folder, build_transform(TransformSpec()))
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.tensor(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "digits", help="digits ImageFolder (written when missing)")
    parser.add_argument("--output", type=Path, default=DIGITS_WEIGHTS, help="weights file (safetensors)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    folders = digits_imagefolder(args.data, size=32)
    train_x, train_y = load_split(folders.train)
    val_x, val_y = load_split(folders.val)
    # Small shifts and rotations: the 8x8 digits are centred, handwriting is not.
    augment = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))

    model = digits_cnn().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    steps = args.epochs * -(-len(train_x) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for batch in order.split(args.batch_size):
            inputs = torch.stack([augment(image) for image in train_x[batch]])
            loss = loss_fn(model(inputs), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.inference_mode():
            top1 = float((model(val_x).argmax(1) == val_y).double().mean())
        print(f"epoch {epoch + 1:2d}/{args.epochs}: loss {loss.item():.3f} · val top-1 {top1:.2%} · {time.perf_counter() - start:.0f} s")
    seconds = time.perf_counter() - start
    model.eval()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.output))
    print(f"trained in {seconds:.0f} s on {args.threads} threads; val top-1 {top1:.2%}; "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; {args.output} ({args.output.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
