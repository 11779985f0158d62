"""Image folders read so that they cannot relabel, multiply or overload: which files an image folder
holds, and the header check of each image before its pixels are decoded.

The rules (documented in docs/reference/limits.md):

- Hidden entries (names starting with ``.``: ``.ipynb_checkpoints``, ``.DS_Store``) are ignored everywhere.
- A link to a folder is refused: it can loop (``loop -> .``) or put another class's images under
  this class (``up -> ..``). A link to a file is followed when its target lies inside the data folder.
- Every class folder holds at least one image.
- An image's header (size and mode) is read before its pixels: more than :data:`MAX_IMAGE_PIXELS`
  pixels, or a mode that has no RGB conversion, is refused naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from optkit.errors import PipelineError

__all__ = ["MAX_IMAGE_PIXELS", "RGB_MODES", "class_folders", "image_files", "check_image_header", "open_image"]

#: The most pixels an image may have: 8192 × 8192 (256 MiB as RGB bytes, 768 MiB as float32).
MAX_IMAGE_PIXELS = 8192 * 8192

#: The image modes PIL converts to RGB (what every image becomes before the transform).
RGB_MODES = frozenset(
    {
        "1",
        "L",
        "LA",
        "La",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBa",
        "RGBX",
        "CMYK",
        "YCbCr",
        "LAB",
        "HSV",
        "I",
        "F",
        "I;16",
        "I;16B",
        "I;16L",
        "I;16N",
    }
)


def class_folders(root: Path, where: str) -> list[str]:
    """The class folders of ``root`` (visible sub-folders, sorted): class index ``i`` is the ``i``-th name.

    Raises:
        PipelineError: a link to a folder among them.
    """
    return sorted(entry.name for entry in _visible_entries(root, root.resolve(), where) if entry.is_dir())


def image_files(folder: Path, root: Path, where: str) -> list[Path]:
    """The image files under ``folder`` (sub-folders included, sorted by path), following the rules above.

    Args:
        folder: where to look.
        root: the data folder: links to files must stay inside it.
        where: how messages name the entry (``data.eval``).

    Raises:
        PipelineError: a link to a folder, or a link to a file outside ``root``.
    """
    found: list[Path] = []
    real_root = root.resolve()
    pending = [folder]
    while pending:
        for entry in _visible_entries(pending.pop(), real_root, where):
            if entry.is_dir():
                pending.append(entry)
            elif entry.suffix.lower() in IMG_EXTENSIONS and entry.is_file():
                found.append(entry)
    return sorted(found)


def _visible_entries(folder: Path, real_root: Path, where: str) -> list[Path]:
    """The entries of ``folder`` that are not hidden; links checked (see the module's rules)."""
    entries = []
    with os.scandir(folder) as scan:
        for entry in scan:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                target = path.resolve()
                if target.is_dir():
                    raise PipelineError(
                        f"{where}: {path} is a link to a folder; image folders follow no folder links (they can loop or "
                        "relabel another class's images): replace it by a real folder"
                    )
                if not target.is_relative_to(real_root):
                    raise PipelineError(f"{where}: {path} links to {target}, outside the data folder {real_root}; copy the file in")
            entries.append(path)
    return entries


def check_image_header(image: Image.Image, path: str | Path, where: str) -> None:
    """Refuse an opened (not yet decoded) image whose size or mode optkit will not decode.

    Raises:
        PipelineError: more pixels than :data:`MAX_IMAGE_PIXELS`, or a mode without an RGB conversion.
    """
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise PipelineError(
            f"{where}: {path} is {width} × {height} = {width * height:,} pixels, more than the limit of {_limit_text()}; resize it"
        )
    if image.mode not in RGB_MODES:
        raise PipelineError(f"{where}: {path} has the image mode {image.mode!r}, which has no RGB conversion")


def open_image(path: str | Path, where: str) -> Image.Image:
    """Open ``path`` lazily (header only), refusing images PIL itself takes for a decompression bomb.

    Raises:
        PipelineError: not an image, or too large (see :func:`check_image_header`).
    """
    try:
        with warnings.catch_warnings():  # PIL warns above its own limit; ours, lower, is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:  # over twice PIL's own limit: PIL refuses before giving the size
        raise PipelineError(f"{where}: {path} has more pixels than the limit of {_limit_text()} ({exc}); resize it") from None
    try:
        check_image_header(image, path, where)
    except PipelineError:
        image.close()
        raise
    return image


def _limit_text() -> str:
    side = int(MAX_IMAGE_PIXELS**0.5)
    return f"{MAX_IMAGE_PIXELS:,}" + (f" ({side} × {side})" if side * side == MAX_IMAGE_PIXELS else "")
