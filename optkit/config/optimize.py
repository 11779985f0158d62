"""The ``optimize:`` section of a pipeline file (and the options of ``optkit optimize``): what to
make faster, within which accuracy budget, with how much time.

Example::

    optimize:
      max_accuracy_drop: 0.01     # at most one point of top-1 below the baseline's
      target: latency             # or macs, size
      runtime: onnxruntime        # where the candidates run: onnxruntime (export, int8) or torch
      budget_minutes: 10
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt

from optkit.config.documents import StrictModel

__all__ = ["OptimizeSpec", "PRUNE_LADDER"]

#: Shares of the model's cost (MACs, or parameters for ``target: size``) the search prunes to, in
#: the order it tries them: a larger budget takes a longer prefix of this list, so a second search
#: with more time reuses every stage of the first (see :mod:`optkit.optimize.cache`).
PRUNE_LADDER: tuple[float, ...] = (0.5, 0.25, 0.35, 0.18, 0.7, 0.12)


class OptimizeSpec(StrictModel):
    """How ``optkit optimize`` searches (the ``optimize:`` section of a pipeline file)."""

    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="Largest top-1 loss against the baseline a chosen model may have (0.01: one point)."
    )
    target: Literal["latency", "macs", "size"] = Field(
        "latency", description="What the chosen model minimises: measured latency (side by side), MACs, or file size."
    )
    runtime: Literal["onnxruntime", "torch"] = Field(
        "onnxruntime", description="Where candidates run: onnxruntime (export_onnx, with and without int8) or torch (eager)."
    )
    budget_minutes: PositiveFloat = Field(10.0, description="Wall-clock budget of the search; later rungs are skipped when it runs out.")
    executor: Literal["local", "ray"] = Field("local", description="Where candidate stages run: local processes or Ray tasks.")
    workers: PositiveInt = Field(1, description="Candidate jobs at once (local), CPUs of a local Ray.")
    prune_targets: list[float] | None = Field(
        None,
        min_length=1,
        description="Shares of MACs (params for target: size) to prune to; default: as many of 0.5, 0.25, 0.35, 0.18, 0.7, 0.12 "
        "as the budget allows.",
    )
    finetune_epochs: PositiveInt = Field(5, description="Epochs of finetune after pruning (when data.train is given).")
    cache: bool = Field(True, description="Reuse stages computed by earlier searches (keyed by model, chain prefix and data).")
    cache_dir: str | None = Field(None, description="Stage cache folder; default: cache/ in the output folder.")
    cache_size_mb: PositiveInt = Field(2048, description="Largest size of the cache; least recently used stages go first.")
    output: str | None = Field(None, description="Output folder; default: the pipeline's output with -optimize appended.")
