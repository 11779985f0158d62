"""The CPU a run measures on: its model name and the instruction sets that change results.

Figures differ by CPU, and so does int8 arithmetic: onnxruntime's x86 kernels multiply uint8
activations by int8 weights with ``vpmaddubsw`` on CPUs without VNNI, whose int16 sum of two
products saturates (onnxruntime's quantization docs), so 8-bit weights lose accuracy there and
7-bit weights (``reduce_range``) do not. :func:`cpu_info` reads what a report names and what
``quantize_onnx`` decides by.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CpuInfo", "cpu_info", "parse_cpuinfo", "INSTRUCTION_SETS"]

#: The /proc/cpuinfo flags a report lists: vector widths and the int8 dot-product extensions.
INSTRUCTION_SETS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm",
)  # fmt: skip
#: Any of these gives x86 an int8 dot product without the saturating int16 intermediate.
_VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """A CPU as reports name it.

    Attributes:
        name: the model name (``/proc/cpuinfo``'s ``model name``, else the platform's).
        architecture: ``x86_64``, ``aarch64``, ...
        instruction_sets: the flags of :data:`INSTRUCTION_SETS` the CPU has, in that order.
        torch_capability: the kernel level torch dispatches to (``AVX2``, ``AVX512``, ``DEFAULT``, ...), or ``None``.
    """

    name: str
    architecture: str
    instruction_sets: tuple[str, ...]
    torch_capability: str | None = None

    @property
    def has_vnni(self) -> bool:
        """Whether x86 int8 products avoid the int16 intermediate (VNNI or AMX)."""
        return any(flag in self.instruction_sets for flag in _VNNI)

    @property
    def int8_saturates(self) -> bool:
        """Whether uint8 x int8 products of 8-bit weights can saturate here (x86 without VNNI)."""
        return self.architecture in ("x86_64", "AMD64", "i686") and not self.has_vnni

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CpuInfo:
        """The CPU that :meth:`as_dict` recorded (a report's ``environment.cpu``)."""
        return cls(str(data["name"]), str(data["architecture"]), tuple(data.get("instruction_sets") or ()), data.get("torch_capability"))

    def describe(self) -> str:
        """One line: ``AMD EPYC (x86_64; avx2, fma, ...)``."""
        return f"{self.name} ({self.architecture}; {', '.join(self.instruction_sets) or 'no listed instruction sets'})"

    def as_dict(self) -> dict[str, object]:
        """The JSON form reports and benchmark files record."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "instruction_sets": list(self.instruction_sets),
            "torch_capability": self.torch_capability,
            "vnni": self.has_vnni,
        }


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """The model name and the flags of a ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``)."""
    name: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and name is None:
            name = value.strip() or None
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name, flags


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once per process; ``/proc/cpuinfo`` where it exists)."""
    try:
        name, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:  # not Linux
        name, flags = None, set()
    return CpuInfo(
        name=name or platform.processor() or platform.machine() or "unknown CPU",
        architecture=platform.machine(),
        instruction_sets=tuple(flag for flag in INSTRUCTION_SETS if flag in flags),
        torch_capability=_torch_capability(),
    )


def _torch_capability() -> str | None:
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # torch older than 2.0
        return None
