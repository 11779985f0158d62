"""What a run produces: the ``report.json`` contract as pydantic models.

``report.json`` is written and read through these models (:meth:`RunReport.to_json`,
:meth:`RunReport.load`) and published as a JSON Schema (``optkit schema --report``,
:func:`report_json_schema`). Rendering and writing live in :mod:`optkit.reporting`.

Two rules hold for every model:

- **No NaN or infinity is ever written.** A figure that is not finite (the drift of a model whose
  outputs hold NaN) is written as ``null``, and the object's ``non_finite`` names it (a JSON
  Pointer into the object) with what it was (``nan``, ``inf``, ``-inf``); reading the report back
  restores the value.
- **Fields are added, never renamed or given a new meaning** without bumping
  :data:`SCHEMA_VERSION`. Every model keeps fields it does not know (a newer optkit's), so
  readers of an older optkit still load the report.

Readers use the attributes (``stage.metrics.latency_ms.p50``); a field that was not measured is ``None``.
A comparison of several runs (``optkit report``, sweeps, the model-zoo benchmark) is a
:class:`ComparisonReport` (``optkit schema --comparison``, :func:`comparison_json_schema`).
"""

from __future__ import annotations

import enum
import importlib.metadata
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer, model_validator

from optkit.errors import PipelineError
from optkit.files import read_limited

if TYPE_CHECKING:
    from optkit.config.pipeline import Pipeline

__all__ = [
    "SCHEMA_VERSION",
    "REPORT_MAX_BYTES",
    "StageStatus",
    "RunStatus",
    "TimingStatus",
    "STAGE_STATUSES",
    "RUN_STATUSES",
    "ReportModel",
    "Environment",
    "PipelineSummary",
    "LatencyInterval",
    "Latency",
    "Speedup",
    "OutputDrift",
    "Drift",
    "Accuracy",
    "Agreement",
    "Similarity",
    "StageMetrics",
    "NoiseCheck",
    "TimingMemory",
    "Timing",
    "StageResult",
    "RunInfo",
    "RunReport",
    "COMPARISON_KIND",
    "ComparedRun",
    "ComparisonMeta",
    "ComparisonReport",
    "optkit_version",
    "read_report_json",
    "report_json_schema",
    "comparison_json_schema",
    "json_problem",
]

log = logging.getLogger(__name__)

#: The report format's version. 2: figures that are not finite are ``null`` with ``non_finite``
#: naming them (1 wrote the bare tokens ``NaN``/``Infinity``), statuses are closed sets.
SCHEMA_VERSION = 2


# Members are named by their values: a StrEnum hashes by name, and ``{"ok": 0}[status]`` must work.


class StageStatus(enum.StrEnum):
    """What a stage ended as."""

    ok = "ok"
    failed = "failed"
    skipped = "skipped"  # not reached
    interrupted = "interrupted"  # Ctrl-C or a signal while it ran


class RunStatus(enum.StrEnum):
    """What a run is in: ``running`` until it ends."""

    running = "running"
    ok = "ok"
    failed = "failed"
    interrupted = "interrupted"


class TimingStatus(enum.StrEnum):
    """Where the side-by-side timing of an interleaved run is."""

    pending = "pending"
    ok = "ok"
    failed = "failed"
    interrupted = "interrupted"


#: The largest report.json optkit reads (a run's is a few KiB; a comparison of hundreds of runs a few MiB).
REPORT_MAX_BYTES = 64 * 2**20

#: What a stage can end as (``skipped``: not reached).
STAGE_STATUSES = tuple(s.value for s in StageStatus)
#: What a run can be in: ``running`` until it ends.
RUN_STATUSES = tuple(s.value for s in RunStatus)


def optkit_version() -> str:
    """The installed optkit's version (``unknown`` when run from a source tree that is not installed)."""
    try:
        return importlib.metadata.version("optkit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- JSON values ----------------------------------------------------------------------------------------


def _pointer(path: tuple[str | int, ...]) -> str:
    """An RFC 6901 JSON Pointer to ``path``."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _finite(value: Any, path: tuple[str | int, ...], found: dict[str, str]) -> Any:
    """``value`` with every non-finite float replaced by ``None``; ``found`` gets pointer -> ``nan``/``inf``/``-inf``."""
    if isinstance(value, float) and not math.isfinite(value):
        found[_pointer(path)] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return None
    if isinstance(value, dict):
        return {key: _finite(item, (*path, key), found) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item, (*path, i), found) for i, item in enumerate(value)]
    return value


def _restore(data: dict[str, Any], pointers: dict[str, str]) -> None:
    """Put back the non-finite values :func:`_finite` took out of ``data`` (in place)."""
    for pointer, kind in pointers.items():
        parts = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]
        target: Any = data
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target.get(part)
            if target is None:
                break
        if isinstance(target, list):
            target[int(parts[-1])] = float(kind)
        elif isinstance(target, dict) and parts:
            target[parts[-1]] = float(kind)


def json_problem(value: Any, where: str) -> str | None:
    """Why ``value`` cannot be written to JSON as it is (naming the key at fault), or ``None``.

    JSON values are ``None``, ``bool``, ``int``, ``float`` (non-finite ones become ``null``),
    ``str``, lists and tuples of them, and dicts with string keys.

    Example:
        >>> json_problem({"scale": {"factor": object()}}, "details")
        "details['scale']['factor'] is a object, not a JSON value; convert it (float(x), x.tolist(), str(x))"
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    if isinstance(value, (list, tuple)):
        return next((p for i, item in enumerate(value) if (p := json_problem(item, f"{where}[{i}]"))), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r}, a {type(key).__name__}: JSON keys are strings"
            problem = json_problem(item, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    return f"{where} is a {type(value).__name__}, not a JSON value; convert it (float(x), x.tolist(), str(x))"


# --- the base model -------------------------------------------------------------------------------------


class ReportModel(BaseModel):
    """A part of ``report.json``: typed fields, unknown fields kept, no NaN written."""

    # NaN and infinity reach the serializer below as floats ("constants"), which writes them as null with the reason.
    model_config = ConfigDict(extra="allow", validate_assignment=True, populate_by_name=True, ser_json_inf_nan="constants")

    #: Leave out fields that are ``None`` (not measured) when writing; the top-level models keep them.
    _omit_none: ClassVar[bool] = True
    #: Write only the fields that were given (``None`` included), as a mapping passed through is written.
    _omit_unset: ClassVar[bool] = False

    non_finite: dict[str, Literal["nan", "inf", "-inf"]] | None = Field(
        None,
        description="Values of this object that were not finite and are written as null: a JSON Pointer into the object "
        '("/max_abs") -> what the value was (nan, inf or -inf). Absent when every value is finite.',
    )

    @model_validator(mode="before")
    @classmethod
    def _restore_non_finite(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("non_finite"):
            data = json.loads(json.dumps(data))  # a deep copy of plain JSON data, which _restore changes
            _restore(data, data.pop("non_finite"))
        return data

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        data = handler(self)
        if self._omit_unset:
            given = self.model_fields_set | set(self.__pydantic_extra__ or ())
            data = {key: value for key, value in data.items() if key in given}
        elif self._omit_none:
            data = {key: value for key, value in data.items() if value is not None}
        data.pop("non_finite", None)
        if info.mode_is_json():
            found: dict[str, str] = {}
            data = _finite(data, (), found)
            if found:
                data["non_finite"] = found
        return data

    def __bool__(self) -> bool:
        """Whether anything is recorded: ``if stage.metrics:`` is false for a stage that was never measured."""
        return any(value is not None for value in (*self.__dict__.values(), *(self.__pydantic_extra__ or {}).values()))


# --- environment and pipeline ---------------------------------------------------------------------------


class Environment(ReportModel):
    """Where the run ran: versions, platform, device, threads."""

    _omit_none: ClassVar[bool] = False

    python: str | None = Field(None, description="Python version.")
    platform: str | None = Field(None, description="platform.platform(): operating system and kernel.")
    processor: str | None = Field(None, description="The CPU's model name (cpu.name).")
    cpu: dict[str, Any] | None = Field(
        None,
        description="The CPU: name, architecture, instruction_sets (avx2, avx512f, ...), torch_capability (torch's CPU "
        "kernels: AVX2, AVX512, ...) and vnni (int8 dot-product instructions); see optkit.measure.cpu.",
    )
    torch: str | None = Field(None, description="torch version.")
    torchvision: str | None = Field(None, description="torchvision version (null when not installed).")
    onnx: str | None = Field(None, description="onnx version (null when not installed).")
    onnxruntime: str | None = Field(None, description="onnxruntime (or onnxruntime-gpu) version (null when not installed).")
    thop: str | None = Field(None, description="thop version, whose formulas count MACs (null when not installed).")
    cuda: str | None = Field(None, description="The CUDA version torch was built with (null for a CPU build).")
    device: str | None = Field(None, description="The device's name: cpu, or the GPU's name (NVIDIA H100 ...).")
    device_type: str | None = Field(None, description="cpu or cuda.")
    threads: int | None = Field(None, description="torch intra-op threads when the run started.")


class PipelineSummary(ReportModel):
    """The pipeline as the run understood it (defaults filled in)."""

    _omit_none: ClassVar[bool] = False

    path: str | None = Field(None, description="The pipeline file (null for a pipeline built in code).")
    model: dict[str, Any] = Field(default_factory=dict, description="The model section: source, weights, input_shape, kwargs, ...")
    device: str | int | None = Field(None, description="The device the file asked for (auto, cpu, cuda, cuda:N or N).")
    seed: int | None = Field(None, description="The seed of the measured input batch and of model construction.")
    measure: dict[str, Any] = Field(default_factory=dict, description="The measure section, defaults filled in.")
    data: dict[str, Any] | None = Field(None, description="The data section, when given.")
    passes: list[dict[str, Any]] = Field(
        default_factory=list, description="The stages in order: {pass: name, options: the validated options}."
    )


# --- metrics --------------------------------------------------------------------------------------------


class LatencyInterval(ReportModel):
    """The distribution-free confidence interval of the median latency."""

    low: float = Field(description="Lower end, milliseconds.")
    high: float = Field(description="Upper end, milliseconds.")
    confidence: float = Field(description="The confidence the order statistics achieve (at least the one asked, when the sample allows).")


class Latency(ReportModel):
    """How long one call of the stage's product took, over the timed calls (milliseconds)."""

    p10: float | None = Field(None, description="10th percentile, ms.")
    p50: float = Field(description="Median, ms.")
    p90: float | None = Field(None, description="90th percentile, ms.")
    p50_interval: LatencyInterval | None = Field(None, description="Confidence interval of the median.")
    mean: float | None = Field(None, description="Mean, ms.")
    std: float | None = Field(None, description="Sample standard deviation, ms.")
    n: int | None = Field(None, description="Timed calls.")
    samples: list[float] | None = Field(None, description="Every timed call in the order taken, ms (rounded to 0.1 µs).")
    warmup: int | None = Field(None, description="Untimed calls (or rounds) before timing.")
    batch: int | None = Field(None, description="Batch size of the input.")
    threads: int | None = Field(None, description="torch intra-op threads while timing.")
    device: str | None = Field(None, description="Where the calls ran (cpu, cuda:0).")
    timer: Literal["cuda_event", "perf_counter"] | None = Field(
        None, description="cuda_event (CUDA events around each call) or perf_counter (host clock between device synchronizations)."
    )
    cudnn_benchmark: bool | None = Field(None, description="cuDNN autotuning was on (CUDA only).")
    runtime: str | None = Field(None, description="What ran the calls: torch or the artifact's runtime (onnxruntime).")
    io: dict[str, Any] | None = Field(
        None,
        description="Where a call's inputs and outputs live and whether it copies through the host (inputs, outputs, host_copies, io_binding).",
    )
    compare: Literal["sequential", "interleaved"] | None = Field(
        None, description="sequential: timed alone right after the stage; interleaved: side by side with the other stages."
    )
    side_by_side: int | None = Field(None, description="How many products were timed in the same round-robin loop (interleaved).")
    why_sequential: str | None = Field(None, description="Why a stage of an interleaved run was timed alone.")


class SpeedupInterval(ReportModel):
    """A speed-up interval before the run-to-run margin widened it."""

    low: float | None = Field(None, description="Lower end.")
    high: float | None = Field(None, description="Upper end.")


class Speedup(ReportModel):
    """How many times faster a stage is than a reference stage (the baseline, or the timed stage before)."""

    value: float | None = Field(description="The speed-up: reference median / this stage's median (paired: median of per-round ratios).")
    low: float | None = Field(None, description="Lower end of the interval, widened by the run-to-run margin.")
    high: float | None = Field(None, description="Upper end of the interval, widened by the run-to-run margin.")
    statistical: SpeedupInterval | None = Field(None, description="The statistical interval before widening.")
    confidence: float | None = Field(None, description="The confidence the interval achieves.")
    paired: bool | None = Field(None, description="Both were timed in the same round-robin loop, round by round.")
    method: str | None = Field(None, description="How the interval was computed.")
    margin: float | None = Field(None, description="The run-to-run margin the interval was widened by (measure.run_to_run_margin).")
    tie: bool | None = Field(None, description="The interval includes 1: neither a speed-up nor a slow-down is claimed.")
    against: str | None = Field(None, description="The name of the reference stage.")


class DriftFigures(ReportModel):
    """Drift figures of one part of the outputs against the reference."""

    max_abs: float | None = Field(None, description="Largest absolute difference.")
    reference_max_abs: float | None = Field(None, description="Largest absolute value of the reference.")
    cosine: float | None = Field(None, description="Cosine similarity of the flattened outputs.")


class GroupDrift(DriftFigures):
    """Drift of a channel group of one output (the boxes or the class scores of a detection)."""

    group: str = Field(description="The group's name (boxes, scores, extra).")
    channels: list[int] = Field(description="[start, stop) of the channels the group covers.")


class OutputDrift(DriftFigures):
    """Drift of one output tensor."""

    name: str = Field(description="The output's name (output, output_0, output_1.scores, ...).")
    shape: list[int] = Field(description="The reference output's shape.")
    groups: list[GroupDrift] | None = Field(None, description="Per channel group, when the model's module rules name groups.")


class DriftTolerance(ReportModel):
    """What a stage that must preserve outputs was held to."""

    atol: float | None = Field(None, description="Absolute part of the element-wise bound.")
    rtol: float | None = Field(None, description="Relative part (times max |reference|) of the element-wise bound.")
    cosine: float | None = Field(None, description="Minimum cosine similarity to the stage before.")
    top1_agreement: float | None = Field(None, description="Minimum top-1 agreement with the stage before.")
    set_by: str | None = Field(None, description="The option that set the tolerance.")
    similarity_on: str | None = Field(
        None, description="Where the similarity bounds were checked: data.eval, seeded batch, or a pass's larger seeded batch."
    )
    within_model_sensitivity: dict[str, Any] | None = Field(
        None,
        description="Set when element-wise drift over the bound was within `factor` x the model's own sensitivity (so the stage "
        "was not failed for it): output, drift_max_abs, sensitivity_max_abs, factor.",
    )


class DetectionsCompared(ReportModel):
    """One image's detections in a comparison: tied scores are left out (their order is the runtime's)."""

    output: str = Field(description="The image's output (output_0, ...).")
    reference_detections: int = Field(description="Detections of the reference.")
    compared: int = Field(description="Reference detections compared (scores tied with no other).")
    tied: int = Field(description="Reference detections left out: their score ties with another's.")


class DriftComparison(DriftFigures):
    """A stage's outputs on the seeded batch compared with a reference stage's."""

    comparable: bool | None = Field(None, description="False when the outputs cannot be compared (their shapes differ).")
    shapes: list[list[int]] | None = Field(None, description="This stage's output shapes (when not comparable).")
    reference_shapes: list[list[int]] | None = Field(None, description="The reference's output shapes (when not comparable).")
    top1_agreement: float | None = Field(None, description="Share of samples with the same top-1 class ([batch, classes] outputs).")
    outputs: list[OutputDrift] | None = Field(None, description="The figures per output tensor.")
    detections: list[DetectionsCompared] | None = Field(
        None, description="Per-image detections (lists of dicts of boxes, scores, labels): what was compared, image by image."
    )
    detections_warning: str | None = Field(None, description="Set when no detection of an image was compared (every score tied).")


class Drift(DriftComparison):
    """Output drift against the baseline (the baseline's own is the identity), and against the stage before."""

    previous: DriftComparison | None = Field(None, description="The same figures against the stage before.")
    tolerance: DriftTolerance | None = Field(None, description="The tolerance the stage was held to, when it must preserve outputs.")
    sensitivity: dict[str, Any] | None = Field(
        None, description="Baseline only: input_step and max_abs per output, how much outputs move under that relative input change."
    )
    uninformative: dict[str, str] | None = Field(
        None, description="Outputs whose comparison says nothing (no elements, or the same for two inputs) -> why."
    )
    warning: str | None = Field(None, description="What uninformative means for the figures, in one line.")


class Accuracy(ReportModel):
    """Accuracy on data.eval."""

    top1: float = Field(description="Top-1 accuracy over the labeled samples.")
    top5: float | None = Field(None, description="Top-5 accuracy (5 or more classes).")
    n: int = Field(description="Labeled samples.")
    nonfinite_inputs: int | None = Field(None, description="Samples whose input holds NaN or an infinity (their predictions mean nothing).")


class Similarity(ReportModel):
    """How closely a stage follows the stage before on data.eval."""

    comparable: bool | None = Field(None, description="False when the two have different outputs.")
    top1: float | None = Field(None, description="Share of samples whose top-1 is the same.")
    cosine: float | None = Field(None, description="Cosine similarity of the kept logits.")
    n: int | None = Field(None, description="Samples compared.")
    cosine_n: int | None = Field(None, description="Samples the cosine covers.")


class Agreement(ReportModel):
    """Top-1 agreement with the baseline on data.eval, sample by sample."""

    comparable: bool | None = Field(None, description="False when the stage has another number of outputs than the baseline.")
    top1: float | None = Field(None, description="Share of samples whose top-1 is the baseline's.")
    n: int | None = Field(None, description="Samples compared.")
    classes: int | None = Field(None, description="This stage's outputs (when not comparable).")
    reference_classes: int | None = Field(None, description="The baseline's outputs (when not comparable).")
    previous: Similarity | None = Field(None, description="Similarity to the stage before.")


class MacsBy(ReportModel):
    """Where the MAC count came from."""

    thop_modules: int | None = Field(None, description="MACs counted per module (thop's formulas and module rules).")
    aten_functional: int | None = Field(None, description="MACs the aten counter found outside those modules (attention, ...).")


class StageMetrics(ReportModel):
    """What the runner measured of a stage's product. A field is absent when it was not measured."""

    params: int | None = Field(None, description="Parameters (a shared parameter counts once).")
    trainable_params: int | None = Field(None, description="Parameters with requires_grad.")
    nonzero_params: int | None = Field(None, description="Non-zero parameter values (pruning masks applied).")
    sparsity: float | None = Field(None, description="1 - nonzero_params / params.")
    macs: int | None = Field(None, description="Multiply-accumulates of one forward pass on the measured batch (thop's unit).")
    gmacs: float | None = Field(None, description="macs / 1e9.")
    gflops: float | None = Field(None, description="2 × gmacs.")
    unit: str | None = Field(None, description="What macs counts, in words.")
    macs_by: MacsBy | None = Field(None, description="Where the MAC count came from.")
    uncounted: dict[str, int] | None = Field(
        None, description="Module types that ran with no rule and no counted operation inside -> how many ran (their cost is not in macs)."
    )
    size_bytes: int | None = Field(None, description="Size of the state dict (a module) or of the file (an artifact).")
    runtime: str | None = Field(None, description="What runs the product: torch or the artifact's runtime (onnxruntime).")
    latency_ms: Latency | None = Field(None, description="Latency of one call.")
    speedup: Speedup | None = Field(None, description="Speed-up over the baseline.")
    speedup_vs_previous: Speedup | None = Field(None, description="Speed-up over the timed stage before.")
    peak_memory_bytes: int | None = Field(None, description="Peak CUDA memory allocated while measuring (torch on CUDA).")
    drift: Drift | None = Field(None, description="Output drift on the seeded batch.")
    accuracy: Accuracy | None = Field(None, description="Accuracy on data.eval (labeled data).")
    agreement: Agreement | None = Field(None, description="Agreement with the baseline on data.eval.")


# --- timing ---------------------------------------------------------------------------------------------


class NoiseCheck(ReportModel):
    """The check before timing that the machine is quiet enough (a fixed matrix product, timed)."""

    workload: str | None = Field(None, description="What was timed.")
    n: int | None = Field(None, description="Timed calls.")
    p50_ms: float | None = Field(None, description="Median call, ms.")
    cv: float | None = Field(None, description="Robust coefficient of variation (1.4826 × MAD / median).")
    max_cv: float | None = Field(None, description="The largest cv that passes (measure.noise_max_cv).")
    cpu_share: float | None = Field(None, description="CPU time / (wall time × threads) during the loop (CPU only).")
    min_cpu_share: float | None = Field(None, description="The smallest cpu_share that passes.")
    noisy: bool | None = Field(None, description="The machine was too busy to time on.")
    why: str | None = Field(None, description="Why it was noisy.")


class TimingMemory(ReportModel):
    """The memory estimate behind measure.compare: auto."""

    bytes_per_copy: int | None = Field(None, description="Bytes of one kept copy (the baseline's parameters and buffers).")
    copies: int | None = Field(None, description="Copies interleaved timing keeps (one per stage).")
    available_bytes: int | None = Field(None, description="Memory available when the run started.")
    available_from: str | None = Field(None, description="Where that figure comes from.")
    share: float | None = Field(None, description="The share of it the copies may take.")


class Timing(ReportModel):
    """How latency was measured. Empty when measure.latency is false."""

    compare: Literal["sequential", "interleaved"] | None = Field(None, description="How the stages were timed.")
    requested: str | None = Field(None, description="measure.compare as given (auto, sequential, interleaved).")
    reason: str | None = Field(None, description="Why compare is what it is.")
    warmup: int | None = Field(None, description="Untimed calls or rounds.")
    iters: int | None = Field(None, description="Timed calls or rounds.")
    order: str | None = Field(None, description="The order of the timed calls, in words.")
    confidence: float | None = Field(None, description="The confidence asked of every interval.")
    run_to_run_margin: float | None = Field(None, description="The margin speed-up intervals are widened by.")
    median_interval: str | None = Field(None, description="How the median's interval is computed.")
    speedup_interval: str | None = Field(None, description="How the speed-up's interval is computed.")
    tie: str | None = Field(None, description="When a speed-up is shown as a tie.")
    status: TimingStatus | None = Field(None, description="The side-by-side timing (interleaved): pending, ok, failed or interrupted.")
    error: str | None = Field(None, description="Why the side-by-side timing failed.")
    memory: TimingMemory | None = Field(None, description="The memory estimate of measure.compare: auto.")
    noise: NoiseCheck | None = Field(None, description="The noise check before timing.")


# --- stages and runs ------------------------------------------------------------------------------------


class StageResult(ReportModel):
    """One stage of a run (the baseline is stage 0)."""

    _omit_none: ClassVar[bool] = False

    name: str = Field(description="baseline, or the stage's pass name.")
    pass_name: str | None = Field(None, alias="pass", description="The pass (null for the baseline).")
    index: int = Field(0, description="0 for the baseline, then 1, 2, ... in pipeline order.")
    status: StageStatus = Field(StageStatus.skipped, description="ok, failed, skipped (not reached) or interrupted.")
    duration_s: float = Field(0.0, description="Wall time of the pass itself, seconds (measurement excluded).")
    measure_s: float = Field(0.0, description="Wall time of measuring the stage (metrics, latency when timed alone, accuracy), seconds.")
    metrics: StageMetrics = Field(default_factory=StageMetrics, description="What the runner measured.")
    details: dict[str, Any] = Field(
        default_factory=dict, description="What the pass (or model loading, for the baseline) reported: any JSON, per pass."
    )
    artifacts: list[str] = Field(default_factory=list, description="Files the stage wrote, relative to the run folder.")
    error: str | None = Field(None, description="Why the stage failed or was interrupted.")

    #: The order of positional arguments: ``StageResult("fuse_bn", "fuse_bn", 1)``.
    _positional: ClassVar[tuple[str, ...]] = (
        "name",
        "pass_name",
        "index",
        "status",
        "duration_s",
        "metrics",
        "details",
        "artifacts",
        "error",
        "measure_s",
    )

    def __init__(self, *args: Any, **data: Any) -> None:
        if len(args) > len(self._positional):
            raise TypeError(f"StageResult takes at most {len(self._positional)} positional arguments, got {len(args)}")
        super().__init__(**dict(zip(self._positional, args, strict=False)), **data)

    def to_dict(self) -> dict[str, Any]:
        """The stage as report.json holds it."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        return cls.model_validate(data)


@dataclass
class RunInfo:
    """What observers (the stage hooks) know about the run in progress.

    Attributes:
        compare: how latency is timed: ``sequential`` (each stage's ``latency_ms`` is in its result
            when ``optkit_stage_finished`` sees it) or ``interleaved`` (every stage is timed side by
            side after the last one: latency arrives in report.json at the end of the run).
    """

    pipeline: Pipeline
    output_dir: Path
    device: str
    stage_names: list[str]
    compare: str = "sequential"

    @property
    def stage_count(self) -> int:
        return len(self.stage_names)


class ReportFile(ReportModel):
    """A document written as a ``report.json``: a run's report or a comparison of runs."""

    #: Names the format in errors ("report", "comparison").
    _format: ClassVar[str] = "report"

    schema_: int = Field(SCHEMA_VERSION, alias="schema", description="The report format's version (see docs: explanation/report).")

    @property
    def schema(self) -> int:  # type: ignore[override]  # BaseModel.schema is pydantic v1's deprecated method
        return self.schema_

    def to_dict(self) -> dict[str, Any]:
        """The document as its report.json holds it (no NaN: see the module docstring)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_json(self) -> str:
        """The text of the ``report.json``."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "report.json") -> Self:
        """Read a report.json dict of schema 1 or 2 (a newer one is refused).

        Raises:
            PipelineError: a report from a newer optkit, or one that does not fit the models (naming the field).
        """
        from pydantic import ValidationError

        schema = data.get("schema", SCHEMA_VERSION)
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise PipelineError(
                f"report.json has schema {schema!r}, written by a newer optkit ({data.get('optkit_version')}); "
                f"this optkit ({optkit_version()}) reads schema {SCHEMA_VERSION} and older: upgrade optkit",
                where,
            )
        if schema < SCHEMA_VERSION:
            log.info(
                "%s: report.json has schema %s (optkit %s), read as schema %s: its figures that were not finite "
                "were written as the bare tokens NaN/Infinity",
                where,
                schema,
                data.get("optkit_version") or "?",
                SCHEMA_VERSION,
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            at = ".".join(str(part) for part in first["loc"])
            raise PipelineError(f"report.json does not fit the {cls._format} schema at {at}: {first['msg']}", where) from None

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a ``report.json`` (or the folder holding one)."""
        path = Path(path)
        return cls.from_dict(read_report_json(path), str(path / "report.json" if path.is_dir() else path))


class RunReport(ReportFile):
    """The run report: what ``report.json`` holds (:func:`optkit.reporting.writing.write_run_report` writes it)."""

    _omit_none: ClassVar[bool] = False

    optkit_version: str = Field("", description="The optkit that wrote the report.")
    environment: Environment = Field(default_factory=Environment, description="Where the run ran.")
    pipeline: PipelineSummary = Field(default_factory=PipelineSummary, description="The pipeline, defaults filled in.")
    status: RunStatus = Field(RunStatus.running, description="running (a partial report), ok, failed or interrupted.")
    error: str | None = Field(None, description="Why the run failed or was interrupted.")
    timing: Timing = Field(default_factory=Timing, description="How latency was measured.")
    lock: dict[str, Any] | None = Field(
        None, description="The run folder's lock while the run held it (pid, host, started; took_over: a stale lock's holder)."
    )
    stages: list[StageResult] = Field(default_factory=list, description="The baseline, then every stage in pipeline order.")

    def __init__(self, environment: Any = None, pipeline: Any = None, stages: Any = None, **data: Any) -> None:
        for key, value in (("environment", environment), ("pipeline", pipeline), ("stages", stages)):
            if value is not None:
                data[key] = value
        super().__init__(**data)

    @property
    def baseline(self) -> StageResult | None:
        return self.stages[0] if self.stages and self.stages[0].index == 0 else None


# --- comparisons ----------------------------------------------------------------------------------------

#: ``kind`` of a comparison ``report.json`` (a run's report.json has none).
COMPARISON_KIND = "optkit-comparison"


class ComparedRun(ReportModel):
    """One run in a comparison: its report and the labels it is shown under."""

    _omit_none: ClassVar[bool] = False

    model: str = Field("", description="Model label; default the part of model.source after the last ':'.")
    pipeline: str = Field("", description="Pipeline label; default the passes joined by '+' (baseline when none).")
    run_dir: str | None = Field(None, description="Where the run's files are.")
    seconds: float | None = Field(None, description="Wall time of the job, when a sweep ran it.")
    report: RunReport = Field(description="The run's report (a stub with status failed when the run wrote none).")

    def __init__(self, report: Any = None, **data: Any) -> None:
        if report is not None:
            data["report"] = report
        super().__init__(**data)

    @model_validator(mode="after")
    def _default_labels(self) -> ComparedRun:
        spec = self.report.pipeline
        # object.__setattr__: validate_assignment would run this validator again.
        if not self.model:
            object.__setattr__(self, "model", str(spec.model.get("source", "?")).rsplit(":", 1)[-1])
        if not self.pipeline:
            object.__setattr__(self, "pipeline", "+".join(p.get("pass", "?") for p in spec.passes) or "baseline")
        return self

    @property
    def device(self) -> str:
        """The device name the run recorded ('' when it recorded none: it failed before measuring)."""
        return str(self.report.environment.device or "")


class ComparisonMeta(ReportModel):
    """What a comparison says about itself (shown in its header). Only the fields given are written."""

    _omit_unset: ClassVar[bool] = True

    created: str | None = Field(None, description="When the comparison was written (ISO 8601, local time with offset).")
    title: str | None = Field(None, description="The report's title.")
    command: str | None = Field(None, description="The command line that reproduces it (a sweep's).")
    executor: str | None = Field(None, description="Where a sweep's jobs ran (local, subprocess, ray).")
    jobs: int | None = Field(None, description="A sweep's jobs.")
    job_seconds: float | None = Field(None, description="The sum of the jobs' wall times, seconds.")
    sources: list[str] | None = Field(None, description="What optkit report read (run folders, report.json files).")
    notes: list[str] | None = Field(None, description="Notes shown in the header (no plots, older schemas, ...).")


class ComparisonReport(ReportFile):
    """Several runs side by side: what the ``report.json`` of ``optkit report``, a sweep or a benchmark holds."""

    _omit_none: ClassVar[bool] = False
    _format: ClassVar[str] = "comparison"

    schema_: int = Field(SCHEMA_VERSION, alias="schema", description="The report format's version (as a run's report.json).")
    kind: Literal["optkit-comparison"] = Field("optkit-comparison", description="Tells a comparison from a run's report.json.")
    optkit_version: str = Field(default_factory=optkit_version, description="The optkit that wrote the comparison.")
    status: RunStatus = Field(RunStatus.ok, description="running while a sweep goes on, then ok, failed or interrupted.")
    meta: ComparisonMeta = Field(default_factory=ComparisonMeta, description="Title, command, notes ...")
    runs: list[ComparedRun] = Field(default_factory=list, description="The runs, in the order shown.")


def read_report_json(path: str | Path) -> dict[str, Any]:
    """The ``report.json`` of a run or sweep folder (or the file itself), as a dict.

    Raises:
        FileNotFoundError: there is none.
        PipelineError: it cannot be read, is not JSON, or is not an optkit report.
    """
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    try:
        data = json.loads(read_limited(file, REPORT_MAX_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # UnsafeFileError, bad JSON and bad UTF-8 are ValueErrors
        raise PipelineError(f"cannot read report: {exc}", str(file)) from exc
    if not isinstance(data, dict) or not ("runs" in data or "stages" in data):
        raise PipelineError("not an optkit report (no 'stages' or 'runs')", str(file))
    return data


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema of a run's ``report.json`` (``optkit schema --report``)."""
    schema = RunReport.model_json_schema(by_alias=True, mode="validation")
    # What every report.json has, though the models give them defaults (a partial report included).
    schema["required"] = ["schema", "optkit_version", "environment", "pipeline", "status", "error", "timing", "stages"]
    schema["$defs"]["StageResult"]["required"] = [
        "name",
        "pass",
        "index",
        "status",
        "duration_s",
        "metrics",
        "details",
        "artifacts",
        "error",
    ]
    schema["$id"] = f"https://optkit.dev/schemas/report-{SCHEMA_VERSION}.json"
    schema["title"] = "optkit report.json"
    return schema


def comparison_json_schema() -> dict[str, Any]:
    """The JSON Schema of a comparison's ``report.json`` (``optkit schema --comparison``).

    Its runs' reports are held to the run report's schema (:func:`report_json_schema`).
    """
    schema = ComparisonReport.model_json_schema(by_alias=True, mode="validation")
    report = report_json_schema()
    for name, definition in report.pop("$defs").items():
        schema["$defs"][name] = definition
    schema["$defs"]["RunReport"] = {key: value for key, value in report.items() if not key.startswith("$")}
    schema["required"] = ["schema", "kind", "optkit_version", "status", "meta", "runs"]
    schema["$defs"]["ComparedRun"]["required"] = ["model", "pipeline", "run_dir", "seconds", "report"]
    schema["$id"] = f"https://optkit.dev/schemas/comparison-{SCHEMA_VERSION}.json"
    schema["title"] = "optkit comparison report.json"
    return schema
