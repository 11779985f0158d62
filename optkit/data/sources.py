"""Dataset sources: ``scheme:target`` in a ``data:`` entry becomes a ``torch.utils.data.Dataset``.

The standard schemes are registered by the ``optkit_plugins.datasets`` plugin through the same
hook (``optkit_register_datasets``) any plugin uses:

- ``imagefolder:PATH``: torchvision's ``ImageFolder`` (one sub-folder per class, labels from the
  sorted folder names), read through ``data.transform``; relative to the pipeline file.
- ``images:PATH``: every image under ``PATH`` (sub-folders included), without labels: for
  passes that need inputs only (distillation, calibration).
- ``python:package.module:callable``: any callable returning a ``Dataset`` of ``(input, label)``
  pairs or of inputs only, called with the entry's ``kwargs``; it brings its own transform.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from optkit.data.folders import class_folders, image_files, open_image
from optkit.errors import PipelineError
from optkit.files import resolve_path
from optkit.models.sources import call_factory, import_callable

if TYPE_CHECKING:
    from collections.abc import Iterable

    from optkit.config.data import DatasetSpec

__all__ = [
    "DatasetRequest",
    "DatasetLoader",
    "load_imagefolder",
    "load_images",
    "UnlabeledImages",
    "load_python_dataset",
    "image_folder",
    "verify_images",
    "STANDARD_DATASETS",
]

log = logging.getLogger(__name__)


@dataclass
class DatasetRequest:
    """What a dataset loader is asked for.

    Attributes:
        target: the part of the source after ``scheme:``.
        spec: the whole validated entry (``source``, ``batch_size``, ``limit``, ``kwargs``, ...).
        role: ``eval``, ``train`` or ``calibration``: the entry of ``data:`` (for messages).
        transform: the ``data.transform`` pipeline, for loaders that read images.
        base_dir: relative paths resolve against this (the pipeline file's folder, or ``data.root``).
        details: what loading has to report (merged into the entry's ``details.data.<role>`` of the
            baseline stage, beside ``source``, ``samples``, ``batch_size`` and ``classes``).
    """

    target: str
    spec: DatasetSpec
    role: str
    transform: Callable[[Any], Any]
    base_dir: Path = field(default_factory=Path.cwd)
    details: dict[str, Any] = field(default_factory=dict)

    def resolve(self, path: str | Path) -> Path:
        """``path`` made absolute against :attr:`base_dir` (``~`` expanded)."""
        return resolve_path(path, self.base_dir)

    @property
    def option(self) -> str:
        """``data.<role>``: how messages name the entry."""
        return f"data.{self.role}"


DatasetLoader = Callable[[DatasetRequest], "Dataset[Any]"]


def load_imagefolder(request: DatasetRequest) -> ImageFolder:
    """``imagefolder:PATH``: class sub-folders of images, read through ``data.transform``.

    Raises:
        PipelineError: the folder is missing, is a file, or holds no class folder with images.
    """
    folder = request.resolve(request.target)
    if not folder.exists():
        raise PipelineError(f"{request.option}: no such folder {folder} (from {request.spec.source})")
    if not folder.is_dir():
        raise PipelineError(f"{request.option}: {folder} is a file, not a folder of class folders")
    classes = class_folders(folder, request.option)
    if not classes:
        raise PipelineError(
            f"{request.option}: {folder} holds no class folders; an image folder has one sub-folder per class (e.g. {folder}/cat/1.png)"
        )
    dataset = image_folder(folder, request.transform, allow_empty=True, where=request.option)
    if not dataset.samples:
        raise PipelineError(
            f"{request.option}: {folder} has class folders ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}) "
            f"but no images in them (looked for {', '.join(IMG_EXTENSIONS)})"
        )
    # A class without images would still take a label: the README promises it is an error.
    empty = sorted(set(dataset.classes) - {dataset.classes[label] for _, label in dataset.samples})
    if empty:
        raise PipelineError(
            f"{request.option}: class folder {folder / empty[0]} holds no images (looked for {', '.join(IMG_EXTENSIONS)})"
            + (f"; nor do {', '.join(empty[1:])}" if len(empty) > 1 else "")
        )
    request.details["folder"] = str(folder)
    return dataset


class UnlabeledImages(Dataset):
    """Image files without labels: each item is the transformed image alone (its label is ``-1``).

    Args:
        files: the image files, in order.
        transform: applied to each PIL image.

    Attributes:
        samples: ``(path, -1)`` per file, as ``ImageFolder.samples`` (optkit checks every file before a run).
    """

    def __init__(self, files: list[Path], transform: Callable[[Any], Any] | None = None, where: str = "images") -> None:
        self.samples = [(str(path), -1) for path in files]
        self.transform = transform
        self.where = where

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        image = _decode(self.samples[index][0], self.where)
        return self.transform(image) if self.transform is not None else image


def load_images(request: DatasetRequest) -> UnlabeledImages:
    """``images:PATH``: every image file under ``PATH`` (sub-folders included, sorted by path), unlabeled.

    Raises:
        PipelineError: the folder is missing, is a file, or holds no image.
    """
    folder = request.resolve(request.target)
    if not folder.is_dir():
        what = "is a file, not a folder of images" if folder.exists() else f"no such folder (from {request.spec.source})"
        raise PipelineError(f"{request.option}: {folder}: {what}")
    files = image_files(folder, folder, request.option)
    if not files:
        raise PipelineError(f"{request.option}: {folder} holds no images (looked for {', '.join(IMG_EXTENSIONS)})")
    request.details["folder"] = str(folder)
    return UnlabeledImages(files, request.transform, request.option)


def image_folder(
    folder: str | Path, transform: Callable[[Any], Any] | None = None, *, allow_empty: bool = False, where: str = "image folder"
) -> ImageFolder:
    """torchvision's ``ImageFolder`` at ``folder``, read by the rules of :mod:`optkit.data.folders` (hidden
    entries ignored, no folder links, image headers checked), whose loader names the file it cannot decode.

    Args:
        folder: one sub-folder per class.
        transform: applied to each PIL image.
        allow_empty: do not raise for class folders without images.
        where: how messages name the folder (``data.eval``).

    Raises:
        PipelineError: a link the rules refuse; a class folder without images (unless ``allow_empty``).
    """
    return _CheckedImageFolder(folder, transform, allow_empty=allow_empty, where=where)


class _CheckedImageFolder(ImageFolder):
    """``ImageFolder`` whose classes and files come from :mod:`optkit.data.folders`."""

    def __init__(self, folder: str | Path, transform: Callable[[Any], Any] | None, *, allow_empty: bool, where: str) -> None:
        self.where = where
        super().__init__(str(folder), transform=transform, loader=functools.partial(_decode, where=where), allow_empty=allow_empty)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = class_folders(Path(directory), self.where)
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(
        self,
        directory: str | Path,
        class_to_idx: dict[str, int],
        extensions: Any = None,
        is_valid_file: Any = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        root = Path(directory)
        samples = []
        for name, index in sorted(class_to_idx.items(), key=lambda item: item[1]):
            files = image_files(root / name, root, self.where)
            if not files and not allow_empty:
                raise PipelineError(f"{self.where}: class folder {root / name} holds no images (looked for {', '.join(IMG_EXTENSIONS)})")
            samples += [(str(path), index) for path in files]
        return samples


def _decode(path: str, where: str = "image") -> Image.Image:
    try:
        with open_image(path, where) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for an unreadable, truncated or corrupt image
        raise PipelineError(f"{where}: cannot decode image {path}: {exc}") from exc


def verify_images(paths: Iterable[str | Path], option: str) -> None:
    """Check that every file is an image PIL can read, without decoding the pixels.

    PIL parses each header (its size and mode are checked against :data:`~optkit.data.folders.MAX_IMAGE_PIXELS`
    and the modes with an RGB conversion) and checks the file's integrity (for PNG, every chunk's checksum), so
    a file that is no image, an empty file, a truncated PNG or a decompression bomb is named before anything runs.

    Raises:
        PipelineError: naming ``option`` and the first file that fails.
    """
    for path in paths:
        try:
            with open_image(path, option) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError) as exc:  # PIL reports broken files with any of these
            raise PipelineError(f"{option}: {path} is not a readable image: {exc}") from None


def load_python_dataset(request: DatasetRequest) -> Dataset[Any]:
    """``python:package.module:callable`` called with the entry's ``kwargs``; returns a ``Dataset``.

    Raises:
        PipelineError: the callable cannot be imported or called, or returns no sized dataset.
    """
    factory = import_callable(request.target, request.base_dir, request.option)
    dataset = call_factory(factory, request.spec.kwargs, request.target, request.option, f"{request.option}.kwargs")
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise PipelineError(
            f"{request.option}: {request.target} returned {type(dataset).__name__}, not a Dataset with __getitem__ and __len__"
        )
    return dataset


#: The data set schemes optkit ships, by name: its standard ``datasets`` plugin registers them
#: through ``optkit_register_datasets`` as any plugin registers its own.
STANDARD_DATASETS: dict[str, DatasetLoader] = {"imagefolder": load_imagefolder, "images": load_images, "python": load_python_dataset}
