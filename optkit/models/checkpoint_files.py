"""Reading checkpoint files safely: ``torch.load(weights_only=True)`` or safetensors, never a silent fallback.

A file is recognised by its first bytes, not its name: a little-endian header length that fits
the file followed by ``{`` is safetensors (read with safetensors, never through pickle), a zip
archive or a pickle is a ``torch.save`` checkpoint. A zip checkpoint's CRC checksums are verified
before it is read: torch itself does not, and damaged tensor bytes would load silently. A checkpoint whose pickle needs more than tensors and
plain containers is refused with the blocked global's name and the explicit opt-in
(``trust_checkpoint``); only with that opt-in is it unpickled in full.

Example:
    >>> ckpt = read_checkpoint("resnet18.pth")  # doctest: +SKIP
    >>> ckpt.format, ckpt.saved_on
    ('torch', ['cpu'])
"""

from __future__ import annotations

import logging
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optkit.errors import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = ["MapLocation", "LoadedCheckpoint", "read_checkpoint", "sniff_format"]

log = logging.getLogger(__name__)

#: ``map_location`` as a pipeline file gives it: a device, or a mapping of saved device to device.
MapLocation = str | dict[str, str]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors' own limit on the JSON header


@dataclass
class LoadedCheckpoint:
    """What a checkpoint file held, and how it was read.

    Attributes:
        path: the file.
        obj: the deserialized object (a state dict, a wrapper dict, a whole module, ...).
        format: ``torch`` (``torch.save``, zip or legacy) or ``safetensors``.
        saved_on: the devices the tensors were saved on (``cpu``, ``cuda:0``; empty for safetensors,
            which records none).
        trusted: whether full unpickling was allowed (``trust_checkpoint``).
        metadata: the safetensors header's ``__metadata__``, if any.
    """

    path: Path
    obj: Any
    format: str
    saved_on: list[str] = field(default_factory=list)
    trusted: bool = False
    metadata: dict[str, str] = field(default_factory=dict)

    def account(self) -> dict[str, Any]:
        """The part of a load report that describes the file."""
        account: dict[str, Any] = {"path": str(self.path), "format": self.format}
        account["saved_on"] = self.saved_on if self.format == "torch" else "not recorded (safetensors)"
        if self.trusted:
            account["trusted"] = True
        if self.metadata:
            account["metadata"] = self.metadata
        return account


def sniff_format(path: Path) -> str:
    """``torch`` or ``safetensors``, from the file's first bytes.

    Raises:
        CheckpointError: the file is empty or is neither (the message shows how it starts).
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        raise CheckpointError(f"{path}: the file is empty (an interrupted download or save?)")
    # safetensors first: its header length may start with any byte, 0x80 (a pickle's first byte)
    # included; a length that fits the file followed by "{" is no zip and no pickle.
    if len(head) == 9 and head[8:9] == b"{":
        length = struct.unpack("<Q", head[:8])[0]
        if length < _MAX_SAFETENSORS_HEADER and 8 + length <= path.stat().st_size:
            return "safetensors"
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO):
        return "torch"
    raise CheckpointError(
        f"{path}: not a PyTorch checkpoint or safetensors file (it starts with {head!r}); "
        "expected a file written by torch.save or safetensors"
    )


def read_checkpoint(
    path: str | Path,
    *,
    map_location: MapLocation = "cpu",
    trust: bool = False,
    option: str = "model.weights",
) -> LoadedCheckpoint:
    """Read ``path`` without running code from it unless ``trust`` is set.

    Args:
        path: a ``torch.save`` file (zip or legacy) or a ``.safetensors`` file.
        map_location: where tensors go: a device (``cpu``, ``cuda:1``) or a mapping of saved
            device to device (``{"cuda:0": "cuda:1"}``), as in :func:`torch.load`.
        trust: allow full unpickling (``weights_only=False``): only for files you trust.
        option: the pipeline option being loaded, named in errors (``model.weights``, ``model.source``).

    Returns:
        The object the file holds, with its format and the devices its tensors were saved on.

    Raises:
        CheckpointError: no such file, empty, truncated or not a checkpoint, a blocked global
            (naming it and the opt-in), or a device that ``map_location`` cannot reach.
    """
    path = Path(path)
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise CheckpointError(f"{option}: {path}: {what}")
    try:
        kind = sniff_format(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{option}: {exc.message}") from None
    if kind == "safetensors":
        return _read_safetensors(path, map_location, option)
    return _read_torch(path, map_location, trust, option)


def _read_torch(path: Path, map_location: MapLocation, trust: bool, option: str) -> LoadedCheckpoint:
    import torch

    saved_on: set[str] = set()

    def restore(storage: torch.storage.Storage, location: str) -> torch.storage.Storage:
        # torch.load hands each storage (on the CPU) with the device it was saved on; recording
        # that is the only way to learn it. The mapping then follows torch.load's own rules.
        saved_on.add(location)
        target = map_location.get(location, location) if isinstance(map_location, dict) else map_location
        return torch.serialization.default_restore_location(storage, str(target))

    _verify_zip(path, option)
    try:
        if trust:
            # Deliberate: the user opted in (trust_checkpoint / --trust-checkpoint) to unpickling
            # arbitrary objects (a whole pickled module), which can run code from the file.
            log.warning("%s: unpickling %s in full (trust_checkpoint is set)", option, path)
        # An open file, not the path: torch.load reads a path ending in .safetensors as safetensors,
        # and the format here comes from the first bytes (sniff_format), not from the name.
        with open(path, "rb") as f:
            obj = torch.load(f, map_location=restore, weights_only=not trust)
    except pickle.UnpicklingError as exc:
        raise _unpickling_error(path, exc, option) from None
    except RuntimeError as exc:
        raise _runtime_error(path, exc, map_location, saved_on, option) from None
    except (ModuleNotFoundError, AttributeError) as exc:  # full unpickling: the pickled class is not importable
        raise CheckpointError(
            f"{option}: {path}: the pickled objects need code this environment lacks ({exc}); install or put "
            "on PYTHONPATH the package that defined them (YOLOv5 checkpoints need its `models` package), or "
            "save a state dict and load it with model.weights"
        ) from None
    # What torch raises on a cut-off zip (OSError from its reader) or a cut-off/foreign pickle.
    except (OSError, EOFError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{option}: {path}: cannot read it as a PyTorch checkpoint (truncated or not written by "
            f"torch.save): {type(exc).__name__}: {exc}"
        ) from None
    return LoadedCheckpoint(path, obj, "torch", sorted(saved_on), trusted=trust)


def _verify_zip(path: Path, option: str) -> None:
    """Check the CRC of every entry of a zip checkpoint (a read of the whole file).

    Raises:
        CheckpointError: an entry's bytes do not match its checksum, or the archive is cut off.
    """
    with open(path, "rb") as f:
        if not f.read(4).startswith(_ZIP_MAGIC):
            return  # a legacy pickle: no checksums to verify
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CheckpointError(f"{option}: {path}: cannot read it as a PyTorch checkpoint (truncated or corrupted?): {exc}") from None
    if damaged is not None:
        raise CheckpointError(
            f"{option}: {path}: corrupted: the bytes of {damaged} do not match their checksum "
            "(a damaged download or disk?); get the file again"
        )


def _unpickling_error(path: Path, exc: pickle.UnpicklingError, option: str) -> CheckpointError:
    message = str(exc)
    first = _BLOCKED_GLOBAL.findall(message)
    # The one torch stopped at first (the outermost class), then the rest, torch's own last.
    blocked = sorted(set(_blocked_globals(path)) | set(first), key=lambda g: (g not in first, g.startswith("torch."), g))
    if not blocked:
        reason = next((line.strip() for line in message.splitlines() if "Unsupported" in line), message.splitlines()[0])
        return CheckpointError(f"{option}: {path}: not a PyTorch checkpoint, or a pickle that torch cannot read safely ({reason})")
    opt_in = (
        "`trust_checkpoint: true` under model: (or under model.weights:)"
        if option != "model.source"
        else "`trust_checkpoint: true` under model:"
    )
    return CheckpointError(
        f"{option}: {path}: refused to unpickle GLOBAL {', '.join(blocked[:5])}"
        f"{f' (and {len(blocked) - 5} more)' if len(blocked) > 5 else ''}: the file holds more than tensors "
        "and plain containers, and loading it would run code from the file. If you trust where it came "
        f"from, opt in with {opt_in} in the pipeline file or `optkit run --trust-checkpoint`"
    )


def _blocked_globals(path: Path) -> list[str]:
    """Every global the safe unpickler would refuse (zip checkpoints only; else empty)."""
    import torch

    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError):  # legacy format: use torch's message
        return []


def _runtime_error(path: Path, exc: RuntimeError, map_location: MapLocation, saved_on: set[str], option: str) -> CheckpointError:
    message = str(exc).split(". ")[0]
    if "don't know how to restore" in message:
        return CheckpointError(
            f"{option}.map_location: {map_location!r} names a device torch does not know ({message}); "
            "use cpu, cuda, cuda:N, or a mapping such as {'cuda:0': 'cpu'}"
        )
    if "deserialize object on" in message:
        saved = ", ".join(sorted(saved_on)) or "an unknown device"
        return CheckpointError(
            f"{option}.map_location: {map_location!r} sends tensors saved on {saved} to a device this "
            f"machine does not have ({message}); use map_location: cpu or a mapping such as {{'cuda:0': 'cpu'}}"
        )
    return CheckpointError(f"{option}: {path}: cannot read it as a PyTorch checkpoint (truncated or corrupted?): {message}")


def _read_safetensors(path: Path, map_location: MapLocation, option: str) -> LoadedCheckpoint:
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    # safetensors records no device: a mapping of saved devices cannot apply, so it loads to the CPU.
    device = map_location if isinstance(map_location, str) else "cpu"
    try:
        tensors = load_file(path, device=device)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            metadata = json.loads(f.read(length)).get("__metadata__") or {}
    except SafetensorError as exc:
        raise CheckpointError(f"{option}: {path}: cannot read this safetensors file (truncated or corrupted?): {exc}") from None
    except RuntimeError as exc:  # an unreachable device
        raise CheckpointError(f"{option}.map_location: {map_location!r}: {exc}") from None
    return LoadedCheckpoint(path, tensors, "safetensors", metadata=metadata)
