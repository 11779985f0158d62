"""The stage cache of ``optkit optimize``: what a chain prefix made, kept for the next search.

An entry is keyed by the model's content, the chain prefix (each stage's pass and options) and the
data spec, as Olive keys its pass cache; it holds the prefix's product (``model.pt`` or an ONNX
file) and the metrics its last stage was measured with. A second search with a larger budget finds
the first one's prefixes and continues from them. The cache has a size limit: the least recently
used entries go first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optkit.files import atomic_write_text

__all__ = ["StageCache", "CacheEntry", "model_hash", "prefix_key"]

log = logging.getLogger(__name__)

_META = "entry.json"


def model_hash(model: nn.Module, section: dict[str, Any]) -> str:
    """A digest of the model's ``model:`` section and every parameter and buffer (names, shapes, values)."""
    digest = hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def prefix_key(model: str, prefix: list[Any], data: dict[str, Any] | None, device: str) -> str:
    """The cache key of a chain prefix (its ``passes:`` items) applied to ``model`` with ``data`` on ``device``."""
    text = json.dumps({"model": model, "passes": prefix, "data": data, "device": device}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class CacheEntry:
    """One cached prefix: its folder, product file and the metrics of its last stage."""

    folder: Path
    meta: dict[str, Any]

    @property
    def product(self) -> Path | None:
        """The saved module (``.pt``) or artifact (``.onnx``); ``None`` for a stage kept as metrics only."""
        return self.folder / str(self.meta["product"]) if self.meta.get("product") else None

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.meta.get("metrics") or {})

    @property
    def stages(self) -> int:
        return int(self.meta["stages"])


@dataclass
class StageCache:
    """Cached chain prefixes under ``root``.

    Attributes:
        stored: prefixes stored by this search.
        evicted: entries removed to stay within ``limit_bytes``.
    """

    root: Path
    limit_bytes: int
    stored: int = 0
    evicted: list[str] = field(default_factory=list)

    def get(self, key: str) -> CacheEntry | None:
        """The entry of ``key`` (marked as just used), or ``None``."""
        folder = self.root / key
        try:
            meta = json.loads((folder / _META).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        entry = CacheEntry(folder, meta)
        if entry.product is not None and not entry.product.is_file():
            return None
        os.utime(folder / _META)  # least recently used goes first
        return entry

    def put(self, key: str, product: Path | None, stages: int, metrics: dict[str, Any], passes: list[Any]) -> CacheEntry:
        """Store ``product`` (copied; ``None``: metrics only) as the prefix ``key`` of ``stages`` stages, then evict to the limit."""
        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        if product is not None:
            shutil.copy2(product, folder / product.name)
        meta = {
            "product": product.name if product is not None else None,
            "stages": stages,
            "metrics": metrics,
            "passes": passes,
            "created": time.time(),
        }
        atomic_write_text(folder / _META, json.dumps(meta, indent=1))
        self.stored += 1
        self.evict(keep=key)
        return CacheEntry(folder, meta)

    def evict(self, keep: str | None = None) -> None:
        """Remove the least recently used entries until the cache fits ``limit_bytes`` (``keep`` stays)."""
        if not self.root.is_dir():
            return
        entries = []
        for folder in self.root.iterdir():
            meta = folder / _META
            if folder.is_dir() and meta.is_file():
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                entries.append((meta.stat().st_mtime, folder, size))
        total = sum(size for _, _, size in entries)
        for _, folder, size in sorted(entries, key=lambda e: e[0]):
            if total <= self.limit_bytes:
                break
            if folder.name == keep:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            self.evicted.append(folder.name)
            log.info("optimize cache: evicted %s (%.1f MiB) to stay under %.0f MiB", folder.name, size / 2**20, self.limit_bytes / 2**20)
