"""Which int8 scheme keeps accuracy on the CPU the model will run on.

onnxruntime's x86 kernels multiply uint8 activations by 8-bit weights with ``vpmaddubsw`` where the
CPU has no VNNI; its int16 sum of two products saturates, and accuracy falls (the shipped digits
model: cosine 0.9875 to its float outputs on an AVX2-only AMD EPYC, 0.99994 on a VNNI Xeon).
7-bit weights (``reduce_range``) cannot saturate and run the same kernels, so cost no time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from optkit import CpuInfo

__all__ = ["ReduceRangeChoice", "choose_reduce_range"]


@dataclass(frozen=True)
class ReduceRangeChoice:
    """``reduce_range`` as decided, and why (report.json's ``details.int8_scheme``)."""

    reduce_range: bool
    option: bool | Literal["auto"]
    reason: str

    def as_dict(self, cpu: CpuInfo) -> dict[str, object]:
        return {"reduce_range": self.reduce_range, "option": self.option, "reason": self.reason, "cpu": cpu.as_dict()}


def choose_reduce_range(option: bool | Literal["auto"], cpu: CpuInfo, *, uint8_activations: bool) -> ReduceRangeChoice:
    """7-bit weights where 8-bit ones would saturate on ``cpu``, unless the option pins it.

    Args:
        option: ``quantize_onnx``'s ``reduce_range``: ``auto``, or ``True``/``False`` as the user pinned it.
        cpu: the CPU the quantized model runs on (this machine's: :func:`optkit.cpu_info`).
        uint8_activations: activations quantized to uint8 (dynamic mode always; static by default),
            the operand ``vpmaddubsw`` takes unsigned.
    """
    if option != "auto":
        return ReduceRangeChoice(bool(option), option, f"pinned by the option reduce_range: {str(option).lower()}")
    if not cpu.int8_saturates:
        why = "has VNNI" if cpu.has_vnni else f"is {cpu.architecture}, not x86"
        return ReduceRangeChoice(False, option, f"8-bit weights: {cpu.name} {why}, so int8 products do not saturate")
    if not uint8_activations:
        return ReduceRangeChoice(False, option, "8-bit weights: int8 activations take no saturating uint8 x int8 path")
    return ReduceRangeChoice(
        True,
        option,
        f"7-bit weights: {cpu.name} has no VNNI (no avx512_vnni, avx_vnni or amx_int8), where onnxruntime's uint8 x int8 "
        "products of 8-bit weights saturate an int16 intermediate (vpmaddubsw) and lose accuracy; 7-bit weights run the "
        "same kernels without saturating",
    )
