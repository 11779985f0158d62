"""``quantize_onnx: {mode: auto}``: the int8 scheme chosen by measuring, not by default.

The search, after the peers' (OpenVINO's AccuracyAwareQuantization, NNCF's
``quantize_with_accuracy_control``, onnxruntime's transformer recipes, Olive's quantization passes):

1. **Family defaults.** The graph's family decides the first candidates: a convolutional graph
   gets static int8 with each calibration method asked for; an attention graph (Softmax feeding
   MatMuls, MatMul-heavy) gets dynamic int8 of its MatMuls and Gemms first, then static int8 with
   the activation-by-activation MatMuls (``Q·Kᵀ``, ``attention·V``) kept in float. On a CPU where
   uint8 x int8 products saturate (no VNNI: dynamic int8 then takes 7-bit weights), the attention
   family also gets dynamic int8 with 8-bit uint8 weights: onnxruntime's uint8 x uint8 kernels
   widen to 16 bits before they multiply, so full 8-bit per-channel weights do not saturate (on a
   random DeiT-tiny, top-1 agreement 0.953 against 0.914 with 7-bit int8 weights).
2. **Measure.** Each candidate is quantized and compared with the float graph on the evaluation
   samples (``data.eval``, or the similarity gate's seeded batch): cosine and top-1 agreement
   against the stage's tolerance.
3. **Fall back layer by layer.** When no candidate holds the tolerance, the most accurate one is
   ranked node by node (:mod:`~optkit_plugins.quantize_onnx.sensitivity`: the dB each node loses)
   and the worst nodes are kept in float, 1, 2, 4, ... of them, until the tolerance holds or
   ``auto.max_float_share`` of the compute nodes are float.
4. **Speed.** Each accurate candidate is timed side by side with the float graph (one call each
   per round, shuffled: :func:`optkit.time_callable` with ``against``), and the fastest is chosen.
   When even that one is slower than float (its speed-up's whole interval below 1, as on a CPU
   without VNNI for some MobileNet-like graphs), the stage keeps the float graph and says so
   (``auto.keep_float_if_slower``); a tie keeps int8 (smaller, and not shown slower).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from optkit import ExampleInputs, compare_outputs, flatten_outputs, time_callable
from optkit_plugins.quantize_onnx.detections import is_detections
from optkit_plugins.quantize_onnx.gate import call_by_image, detection_similarity

__all__ = ["Candidate", "Trial", "graph_family", "starting_candidates", "Similarity", "speed_versus_float", "AutoSearch"]

#: Steps narrowing the fallback's count of float nodes once one holds (each halves the gap to a count that failed).
REFINE_STEPS = 2
#: Op types dynamic int8 quantizes in an attention graph: its MatMuls and Gemms (ConvInteger is slower than float Conv on CPUs).
DYNAMIC_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class Candidate:
    """One int8 scheme auto tries.

    Attributes:
        mode: ``static`` or ``dynamic``.
        method: the calibration method (static only).
        float_op_types: op types left in float.
        float_nodes: nodes left in float (the family's defaults and the fallback's).
        origin: why it is tried (a family default, or the fallback from another candidate).
        uint8_weights: dynamic only: 8-bit uint8 weights (uint8 x uint8 kernels, which do not saturate)
            instead of the stage's int8 weight scheme.
    """

    mode: Literal["static", "dynamic"]
    method: str | None = None
    float_op_types: tuple[str, ...] = ()
    float_nodes: tuple[str, ...] = ()
    origin: str = ""
    uint8_weights: bool = False

    @property
    def label(self) -> str:
        scheme = f"static {self.method}" if self.mode == "static" else "dynamic " + "/".join(DYNAMIC_OPS)
        scheme += ", uint8 weights" if self.uint8_weights else ""
        return scheme + (f", {len(self.float_nodes)} nodes in float" if self.float_nodes else "")


@dataclass
class Trial:
    """A candidate as measured.

    Attributes:
        candidate: what was quantized.
        path: the quantized file.
        cosine: of its outputs to the float graph's on the evaluation samples.
        top1: top-1 agreement with the float graph (``None`` for outputs that are not logits).
        holds: cosine and top-1 agreement within the tolerance.
        speed: its speed-up over the float graph, timed side by side (:func:`speed_versus_float`;
            ``None`` until timed).
        error: why the candidate could not be quantized (its cosine is then -1).
    """

    candidate: Candidate
    path: Path
    cosine: float
    top1: float | None
    holds: bool
    speed: dict[str, Any] | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.candidate.label,
            "origin": self.candidate.origin,
            "cosine": round(self.cosine, 6),
            "top1_agreement": self.top1,
            "holds_tolerance": self.holds,
            **({"latency_vs_float": self.speed} if self.speed else {}),
            **({"error": self.error} if self.error else {}),
        }


def same_graph(a: Candidate, b: Candidate) -> bool:
    """``a`` and ``b`` quantize the same nodes the same way (they may differ in calibration method)."""
    return replace(a, method=None, origin="") == replace(b, method=None, origin="")


def attention_matmuls(model: Any) -> list[str]:
    """Names of the MatMul nodes that multiply two activations (neither input is a weight)."""
    weights = {init.name for init in model.graph.initializer}
    constants = {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and not any(name in weights or name in constants for name in node.input)
    ]


def graph_family(model: Any) -> Literal["attention", "convolutional"]:
    """``attention`` when the graph has Softmax and at least as many MatMul/Gemm nodes as Conv nodes, else ``convolutional``."""
    ops = [node.op_type for node in model.graph.node]
    dense = sum(op in DYNAMIC_OPS for op in ops)
    return "attention" if "Softmax" in ops and dense >= ops.count("Conv") else "convolutional"


def starting_candidates(model: Any, methods: Sequence[str], int8_saturates: bool = False) -> list[Candidate]:
    """The family's first candidates (see the module's docstring), for the calibration ``methods`` asked for.

    Args:
        model: the float graph.
        methods: calibration methods of the static candidates.
        int8_saturates: the dynamic int8 scheme takes 7-bit weights because this CPU's uint8 x int8
            products saturate: the attention family then also tries 8-bit uint8 weights.
    """
    if graph_family(model) == "convolutional":
        return [Candidate("static", method, origin="convolutional family: static int8") for method in methods]
    keep = tuple(attention_matmuls(model))
    static = [
        Candidate("static", method, float_nodes=keep, origin="attention family: static int8, activation x activation MatMuls in float")
        for method in methods
    ]
    dynamic = [Candidate("dynamic", origin="attention family: dynamic int8 of MatMul/Gemm")]
    if int8_saturates:
        dynamic.append(
            Candidate(
                "dynamic",
                uint8_weights=True,
                origin="attention family on a CPU whose uint8 x int8 products saturate: 8-bit uint8 weights, no saturation",
            )
        )
    return [*dynamic, *static]


class Similarity:
    """The float graph's outputs on the evaluation samples, and a candidate's closeness to them.

    Args:
        run_float: the float graph, called as the model is.
        batches: the evaluation samples.
        load: a quantized file → its callable (run like the float one).
        fixed_batch: the graph's fixed batch size, if any (detections are then collected slice by slice).
    """

    def __init__(
        self,
        run_float: Callable[..., Any],
        batches: Sequence[ExampleInputs],
        load: Callable[[Path], Callable[..., Any]],
        fixed_batch: int | None = None,
    ):
        self.batches, self.load, self.fixed_batch = list(batches), load, fixed_batch
        self.detections: dict[str, Any] | None = None
        self.reference = self._outputs(run_float)
        self.samples = sum(batch.batch_size for batch in self.batches)

    def _outputs(self, run: Callable[..., Any]) -> Any:
        outputs = [call_by_image(run, batch, self.fixed_batch) for batch in self.batches]
        if all(is_detections(output) for output in outputs):
            return [image for output in outputs for image in output]  # per-image detections: one list of every image
        per_batch = [flatten_outputs(output) for output in outputs]
        return [torch.cat([leaves[i].detach().cpu().float() for leaves in per_batch]) for i in range(len(per_batch[0]))]

    def measure(self, path: Path) -> tuple[float, float | None]:
        """Cosine and top-1 agreement of ``path``'s outputs with the float graph's; for per-image detections
        those of the similarity gate (matched by IoU; ``detections``: the counts of the last call)."""
        outputs = self._outputs(self.load(path))
        if is_detections(self.reference) and is_detections(outputs):
            figures = detection_similarity(outputs, self.reference)
            self.detections = figures["detections"]
            return float(figures["cosine"]), figures["top1"]
        compared = compare_outputs(outputs, self.reference)
        return (-1.0 if compared.cosine is None else float(compared.cosine)), compared.top1_agreement


def speed_versus_float(
    candidate: Callable[..., Any],
    float_graph: Callable[..., Any],
    inputs: ExampleInputs,
    device: torch.device,
    rounds: int,
    warmup: int = 3,
) -> dict[str, Any]:
    """``candidate``'s speed-up over ``float_graph``, timed side by side (each round calls both once,
    in a seeded shuffled order, so noise on a shared machine falls on both alike).

    Returns:
        ``speedup`` (float's time over the candidate's: the median of the per-round ratios; above 1:
        int8 is faster), ``low`` and ``high`` (its 95% interval, widened by the run-to-run margin),
        ``int8_ms`` and ``float_ms`` (medians), ``rounds``.
    """
    record = time_callable(candidate, inputs, device, warmup=warmup, iters=rounds, cuda_events=False, against=float_graph)
    figure = record["speedup"] or {}
    return {
        "speedup": figure.get("value"),
        "low": figure.get("low"),
        "high": figure.get("high"),
        "int8_ms": record["p50"],
        "float_ms": record["against"]["p50"],
        "rounds": rounds,
    }


@dataclass
class AutoSearch:
    """The search of the module's docstring.

    Args:
        quantize: writes a candidate's int8 file (candidate, target) and returns it.
        similarity: what candidates are measured with.
        holds: whether (cosine, top-1 agreement) meet the tolerance.
        rank: a trial → its compute nodes, worst first (:func:`~optkit_plugins.quantize_onnx.sensitivity.rank_nodes`
            on a form that keeps the float names), as ``(node, figures)`` pairs.
        compute_nodes: how many compute nodes the graph has (the fallback's bound is a share of them).
        max_float_share: the most of them the fallback keeps in float.
        time: a candidate file → its speed-up over float (:func:`speed_versus_float` bound to the
            float graph and inputs); ``None``: speed not measured.
        folder: where candidate files go.

    Attributes:
        trials: every candidate tried, in order.
        ranked: node → its figures, for the nodes the fallback ranked (why a node it kept in float was kept).
    """

    quantize: Callable[[Candidate, Path], Path]
    similarity: Similarity
    holds: Callable[[float, float | None], bool]
    rank: Callable[[Trial], list[tuple[str, dict[str, Any]]]]
    compute_nodes: int
    max_float_share: float
    time: Callable[[Path], dict[str, Any]] | None
    folder: Path
    trials: list[Trial] = field(default_factory=list)
    ranked: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _try(self, candidate: Candidate) -> Trial:
        path = self.folder / f"candidate_{len(self.trials)}.onnx"
        try:
            path = self.quantize(candidate, path)
        # onnxruntime's histogram calibrators refuse a tensor of (nearly) constant values ("Too many
        # bins for data range"): that candidate fails, the others go on.
        except ValueError as error:
            trial = Trial(candidate, path, -1.0, None, False, error=f"{type(error).__name__}: {error}"[:300])
            self.trials.append(trial)
            return trial
        cosine, top1 = self.similarity.measure(path)
        trial = Trial(candidate, path, cosine, top1, self.holds(cosine, top1))
        self.trials.append(trial)
        return trial

    def run(self, candidates: Sequence[Candidate]) -> Trial:
        """Try ``candidates``, fall back layer by layer when none holds, time the accurate ones.

        Returns:
            The chosen trial: the fastest that holds the tolerance, else the most accurate tried.
        """
        tried: list[Trial] = []
        for candidate in candidates:
            # Candidates that differ only in calibration make the same graph, as fast: once one holds, the rest add nothing.
            if not any(trial.holds and same_graph(trial.candidate, candidate) for trial in tried):
                tried.append(self._try(candidate))
        accurate = [trial for trial in tried if trial.holds]
        if not accurate:
            fallback = self._fall_back(max(tried, key=lambda trial: trial.cosine))
            accurate = [fallback] if fallback is not None else []
        if not accurate:
            return max(self.trials, key=lambda trial: trial.cosine)
        if self.time is not None:
            for trial in accurate:
                trial.speed = self.time(trial.path)
            return max(accurate, key=lambda trial: (trial.speed or {}).get("speedup") or 0.0)
        return accurate[0]

    def _fall_back(self, base: Trial) -> Trial | None:
        """Keep the worst nodes of ``base`` in float, 1, 2, 4, ... of them, until the tolerance holds; then
        halve the gap to the last count that failed (:data:`REFINE_STEPS` times): each node kept float costs speed."""
        ranking = [(node, figures) for node, figures in self.rank(base) if node not in base.candidate.float_nodes]
        self.ranked.update(ranking)
        limit = min(len(ranking), int(self.max_float_share * self.compute_nodes))
        failed, count, found = 0, 1, None
        while ranking and count <= limit:
            trial = self._keep_float(base, ranking[:count])
            if trial.holds:
                found = (trial, count)
                break
            failed = count
            count = count * 2 if count * 2 <= limit or count == limit else limit
        if found is None:
            return None
        for _ in range(REFINE_STEPS):
            middle = (failed + found[1]) // 2
            if middle <= failed:
                break
            trial = self._keep_float(base, ranking[:middle])
            found, failed = ((trial, middle), failed) if trial.holds else (found, middle)
        return found[0]

    def _keep_float(self, base: Trial, chosen: list[tuple[str, dict[str, Any]]]) -> Trial:
        candidate = replace(
            base.candidate,
            float_nodes=(*base.candidate.float_nodes, *(node for node, _ in chosen)),
            origin=f"fallback from {base.candidate.label}: its {len(chosen)} worst nodes in float",
        )
        return self._try(candidate)
