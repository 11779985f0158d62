"""``optkit optimize``: the fastest chain within an accuracy budget, found by measurement.

Successive halving over rungs of growing cost, each computed through the stage cache
(:mod:`optkit.optimize.jobs`):

1. **prune** (cheap proxies): every pruning prefix, for its MACs and its accuracy right after
   pruning; half of them (the cheapest in MACs, and always the least pruned) go on.
2. **finetune**: the survivors are fine-tuned (when ``data.train`` is given); chains whose accuracy
   is then over the budget stop here.
3. **export / int8** (``runtime: onnxruntime``): the rest are exported, with and without int8.
4. **timing**: every chain still within the budget is timed side by side with the eager baseline
   (:class:`optkit.run.timing.StageTiming`), so each point has a speed-up with its interval.

The chosen chain is the best one within the budget by the target (latency, MACs or size).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from optkit.artifacts import OnnxArtifact
from optkit.config.optimize import OptimizeSpec
from optkit.config.pipeline import ModelSpec, Pipeline
from optkit.errors import PipelineError
from optkit.host.facade import Host
from optkit.measure.latency import configure_timing
from optkit.optimize.cache import CacheEntry, StageCache, model_hash
from optkit.optimize.candidates import Chain, StageKinds, chain_name, generate_chains
from optkit.optimize.jobs import PrefixRunner, absolute_sections, pipeline_document
from optkit.results import StageResult, StageStatus
from optkit.run.device import select_device
from optkit.run.runner import seeded_inputs
from optkit.run.seeding import seeded_construction
from optkit.run.timing import StageTiming, TimingPlan
from optkit.sweep.executors import Executor

__all__ = ["Candidate", "OptimizeResult", "optimize"]

log = logging.getLogger(__name__)

#: Share of the budget kept for the side-by-side timing at the end.
TIMING_SHARE = 0.15


@dataclass
class Candidate:
    """One chain and what the search learnt of it.

    Attributes:
        chain: its stages.
        metrics: its last stage's metrics as report.json holds them (accuracy, MACs, size, ...).
        product: the cached product (``.pt`` module or ``.onnx`` file), once computed.
        status: ``pending``, ``measured``, ``timed``, ``over budget`` or ``cut`` (with :attr:`note`).
        latency_ms / speedup: from the side-by-side timing, as report.json's ``latency_ms`` and ``speedup``.
        pipeline_file: the pipeline file that reproduces it (``optkit run`` it).
    """

    chain: Chain
    metrics: dict[str, Any] = field(default_factory=dict)
    product: Path | None = None
    status: str = "pending"
    note: str = ""
    latency_ms: dict[str, Any] | None = None
    speedup: dict[str, Any] | None = None
    pipeline_file: str | None = None

    @property
    def name(self) -> str:
        return chain_name(self.chain)

    @property
    def top1(self) -> float | None:
        """Top-1 on data.eval; on unlabeled data (labels -1), top-1 agreement with the eager model."""
        accuracy = self.metrics.get("accuracy") or {}
        if accuracy.get("top1") is not None:
            return accuracy["top1"]
        return (self.metrics.get("agreement") or {}).get("top1")

    @property
    def judged_by(self) -> str:
        """What :attr:`top1` is: ``top-1`` (labels) or ``agreement`` (with the eager model's top-1)."""
        return "top-1" if (self.metrics.get("accuracy") or {}).get("top1") is not None else "agreement"

    @property
    def macs(self) -> int | None:
        return self.metrics.get("macs")

    @property
    def size_bytes(self) -> int | None:
        return self.metrics.get("size_bytes")

    @property
    def p50_ms(self) -> float | None:
        return (self.latency_ms or {}).get("p50")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passes": [step.as_pass_item() for step in self.chain],
            "status": self.status,
            "note": self.note,
            "top1": self.top1,
            "macs": self.macs,
            "params": self.metrics.get("params"),
            "size_bytes": self.size_bytes,
            "runtime": self.metrics.get("runtime"),
            "latency_ms": self.latency_ms,
            "speedup": self.speedup,
            "pipeline_file": self.pipeline_file,
        }


@dataclass
class OptimizeResult:
    """What a search found: every candidate, the baseline, the chosen one, and its bookkeeping."""

    output: Path
    spec: OptimizeSpec
    baseline: Candidate
    candidates: list[Candidate]
    chosen: Candidate | None
    stages_reused: int
    stages_computed: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    cache_dir: str | None = None
    timing: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "optkit.optimize/1",
            "settings": self.spec.model_dump(mode="json"),
            "seconds": round(self.seconds, 1),
            # top1 figures are top-1 accuracy on labeled data.eval, else agreement with the eager model's top-1
            "judged_by": self.baseline.judged_by,
            "stages_reused": self.stages_reused,
            "stages_computed": self.stages_computed,
            "cache_dir": self.cache_dir,
            "baseline": self.baseline.to_dict(),
            "chosen": self.chosen.to_dict() if self.chosen is not None else None,
            "candidates": [c.to_dict() for c in self.candidates],
            "timing": self.timing,
            "notes": self.notes,
        }


def optimize(
    pipeline: Pipeline,
    spec: OptimizeSpec,
    executor: Executor,
    output: Path,
    *,
    host: Host | None = None,
    kinds: StageKinds | None = None,
    on_rung: Callable[[str, int], None] | None = None,
) -> OptimizeResult:
    """Search the chains of ``pipeline``'s model for the best one within ``spec.max_accuracy_drop``.

    Args:
        pipeline: the pipeline whose model, device, measure settings and ``data:`` are used (its
            ``passes:`` are not).
        spec: the search settings.
        executor: where candidate stages run.
        output: the search folder (pipelines/, jobs/, runs/, chosen.yaml, the report).
        host: the installed plugins.
        kinds: the pass names to build chains from.
        on_rung: told each rung's name and candidate count as it starts.

    Raises:
        PipelineError: no ``data.eval`` to judge accuracy by, or no candidate chain at all.
    """
    started = time.monotonic()
    host = host if host is not None else Host()
    if not pipeline.evaluates_accuracy:
        raise PipelineError("optimize needs data.eval in the pipeline file: the accuracy budget is judged on it")
    output = Path(output).resolve()  # job files, cached products and chosen.yaml name absolute paths
    output.mkdir(parents=True, exist_ok=True)
    chains = generate_chains(spec, host.get_pass, has_train=pipeline.data is not None and pipeline.data.train is not None, kinds=kinds)
    if not chains:
        raise PipelineError("optimize: no candidate chain can be built from the installed passes")
    device = select_device(pipeline.spec.device)
    with seeded_construction(pipeline.spec.seed):
        model, _ = host.load_model(pipeline.model, pipeline.base_dir)
    cache = _cache(spec, output, pipeline)
    needs = {step: bool(host.get_pass(step.pass_name)(step.option_dict).needs_baseline_model) for chain in chains for step in chain}
    runner = PrefixRunner(
        pipeline=pipeline,
        model_id=model_hash(model, absolute_sections(pipeline)[0]),
        cache=cache,
        executor=executor,
        folder=output,
        deadline=started + spec.budget_minutes * 60 * (1 - TIMING_SHARE),
        baseline_needs=needs,
        device=str(device),
    )
    candidates = [Candidate(chain) for chain in chains]
    notes: list[str] = []
    baseline = Candidate(())
    _run_rungs(runner, candidates, baseline, spec, notes, on_rung or (lambda name, count: None))
    timing = _time_side_by_side(pipeline, model, baseline, candidates, device, notes, on_rung)
    for candidate in [baseline, *candidates]:
        candidate.pipeline_file = str(_write_pipeline(pipeline, candidate, output / "pipelines"))
    chosen = choose(candidates, spec)
    if chosen is not None:
        _save_chosen(chosen, output)
    if runner.failures:
        notes += [f"{name} failed: {error.splitlines()[-1] if error else 'failed'}" for name, error in runner.failures.items()]
    return OptimizeResult(
        output=output,
        spec=spec,
        baseline=baseline,
        candidates=candidates,
        chosen=chosen,
        stages_reused=len(runner.reused_keys),
        stages_computed=len(runner.computed_keys),
        seconds=time.monotonic() - started,
        notes=notes,
        cache_dir=str(cache.root) if spec.cache else None,
        timing=timing,
    )


def _cache(spec: OptimizeSpec, output: Path, pipeline: Pipeline) -> StageCache:
    """The shared cache, or (``cache: false``) an empty one private to this search."""
    limit = spec.cache_size_mb * 2**20
    if not spec.cache:
        private = output / "stages"
        shutil.rmtree(private, ignore_errors=True)
        return StageCache(private, limit)
    root = pipeline.resolve(spec.cache_dir) if spec.cache_dir else output / "cache"
    return StageCache(root, limit)


def _drop(baseline: Candidate, candidate: Candidate) -> float | None:
    if baseline.top1 is None or candidate.top1 is None:
        return None
    return baseline.top1 - candidate.top1


def _fill(candidates: list[Candidate], entries: dict[Chain, CacheEntry]) -> None:
    for candidate in candidates:
        entry = entries.get(candidate.chain)
        if entry is not None:
            candidate.metrics, candidate.product, candidate.status = entry.metrics, entry.product, "measured"


def _run_rungs(
    runner: PrefixRunner,
    candidates: list[Candidate],
    baseline: Candidate,
    spec: OptimizeSpec,
    notes: list[str],
    on_rung: Callable[[str, int], None],
) -> None:
    """Rungs 1-3: prune (proxies), finetune, export/int8; cuts and budget checks between them."""
    prune_name, finetune_name = "prune_channels", "finetune"
    alive = list(candidates)

    def prefix_to(candidate: Candidate, pass_name: str) -> Chain:
        steps = candidate.chain
        last = max((i for i, s in enumerate(steps) if s.pass_name == pass_name), default=-1)
        return steps[: last + 1]

    # Rung 1: the pruned models (and the baseline), for MACs and accuracy right after pruning.
    # The unpruned chains are completed here too: cheap, and the fallback should time run out later.
    pruned = sorted({prefix_to(c, prune_name) for c in alive if prefix_to(c, prune_name)}, key=len)
    unpruned = [c for c in alive if not prefix_to(c, prune_name)]
    # The baseline first, in a job of its own: every budget check compares with it, so a long chain
    # that runs out of time must not take it along.
    base = runner.compute([()], "baseline").get(())
    if base is None:
        raise PipelineError(
            "optimize: the baseline could not be measured: "
            + "; ".join(runner.failures.values())
            + f" (jobs get {spec.budget_minutes * 60 * (1 - TIMING_SHARE):.0f} s of the {spec.budget_minutes:g}-minute budget; "
            "raise --budget-minutes)"
        )
    baseline.metrics, baseline.status = base.metrics, "measured"
    on_rung("prune", len(pruned) + len(unpruned))
    entries = runner.compute([*[c.chain for c in unpruned], *pruned], "prune")
    _fill(unpruned, entries)
    for candidate in unpruned:
        drop = _drop(baseline, candidate)
        if candidate.status == "measured" and drop is not None and drop > spec.max_accuracy_drop:
            candidate.status, candidate.note = "over budget", f"rung 1: {drop * 100:.1f} points lost"
    kept = _halve(pruned, entries, spec)
    for candidate in alive:
        prefix = prefix_to(candidate, prune_name)
        if prefix and prefix not in kept:
            candidate.status, candidate.note = "cut", "rung 1 (pruning): not among the cheapest half"
        elif prefix and prefix in entries:
            if candidate.chain == prefix:  # a chain that only prunes is complete: its figures are known
                candidate.metrics, candidate.product = entries[prefix].metrics, entries[prefix].product
            proxy = Candidate(prefix, entries[prefix].metrics)
            drop = _drop(baseline, proxy)
            no_finetune = not any(s.pass_name == finetune_name for s in candidate.chain)
            if no_finetune and drop is not None and drop > spec.max_accuracy_drop:
                candidate.status, candidate.note = "over budget", f"rung 1: {drop * 100:.1f} points lost by pruning alone"
        elif prefix:
            candidate.status, candidate.note = "cut", "rung 1: not computed (failed, or out of time)"
    alive = [c for c in alive if c.status == "pending"]

    # Rung 2: fine-tuning the pruned survivors.
    # The least pruned first (the safest bet), should the time left not fit them all.
    tuned = sorted({prefix_to(c, finetune_name) for c in alive if prefix_to(c, finetune_name)}, key=lambda p: -_proxy_of(p, entries))
    on_rung("finetune", len(tuned))
    entries = runner.compute(tuned, "finetune")
    for candidate in alive:
        prefix = prefix_to(candidate, finetune_name)
        if not prefix:
            continue
        if prefix not in entries:
            candidate.status, candidate.note = "cut", "rung 2: fine-tuning not computed (failed, or out of time)"
            continue
        drop = _drop(baseline, Candidate(prefix, entries[prefix].metrics))
        if drop is not None and drop > spec.max_accuracy_drop:
            candidate.status, candidate.note = "over budget", f"rung 2: {drop * 100:.1f} points lost after fine-tuning"
    alive = [c for c in alive if c.status == "pending"]

    # Rung 3: the whole chains (export and int8) while time lasts, taken from both ends of the
    # MACs order: the cheapest (most pruned) and the safest (least pruned) first.
    alive.sort(key=lambda c: (_proxy(c, entries_of_runner(runner, c)), len(c.chain)))
    alive = [alive[i // 2] if i % 2 == 0 else alive[-1 - i // 2] for i in range(len(alive))]
    on_rung("export", len(alive))
    _fill(alive, runner.compute([c.chain for c in alive], "export"))
    for candidate in alive:
        drop = _drop(baseline, candidate)
        if candidate.status != "measured":
            candidate.status, candidate.note = "cut", "rung 3: not computed (failed, or out of time)"
        elif drop is not None and drop > spec.max_accuracy_drop:
            candidate.status, candidate.note = "over budget", f"rung 3: {drop * 100:.1f} points lost"
    if runner.seconds_left() <= 0:
        notes.append("the time budget ran out before every rung was complete: candidates marked 'cut' were not computed")


def entries_of_runner(runner: PrefixRunner, candidate: Candidate) -> dict[str, Any]:
    """The metrics of ``candidate``'s longest cached module prefix (its MACs before export), for ordering."""
    for k in range(len(candidate.chain), -1, -1):
        entry = runner.cache.get(runner.key(candidate.chain[:k]))
        if entry is not None and entry.metrics.get("macs") is not None:
            return entry.metrics
    return {}


def _proxy_of(prefix: Chain, entries: dict[Chain, CacheEntry]) -> float:
    """MACs of the pruned model ``prefix`` ends with (its pruning prefix), from ``entries``; 0 when unknown."""
    pruning = prefix[:-1] if len(prefix) > 1 else prefix
    entry = entries.get(pruning)
    return float((entry.metrics.get("macs") if entry is not None else None) or 0)


def _proxy(candidate: Candidate, metrics: dict[str, Any]) -> float:
    """The cheap figure candidates are ordered by: MACs (fewer first); unknown last."""
    macs = metrics.get("macs")
    return float(macs) if macs is not None else math.inf


def _halve(pruned: list[Chain], entries: dict[Chain, CacheEntry], spec: OptimizeSpec) -> set[Chain]:
    """The pruned prefixes that go on: the cheaper half by the target's proxy (parameters for
    size, else MACs), the least pruned one always among them (the safest bet on accuracy); two at least."""
    metric = "params" if spec.target == "size" else "macs"
    measured = [p for p in pruned if p in entries and entries[p].metrics.get(metric) is not None]
    if not measured:
        return set()
    ordered = sorted(measured, key=lambda p: entries[p].metrics[metric])
    keep = max(2, math.ceil(len(ordered) / 2))
    return {ordered[-1], *ordered[: keep - 1]}


def _time_side_by_side(
    pipeline: Pipeline,
    model: Any,
    baseline: Candidate,
    candidates: list[Candidate],
    device: Any,
    notes: list[str],
    on_rung: Callable[[str, int], None] | None,
) -> dict[str, Any] | None:
    """Rung 4: the eager baseline and every measured candidate within budget, timed side by side."""
    timed = [c for c in candidates if c.status == "measured" and c.product is not None]
    if on_rung is not None:
        on_rung("timing", len(timed))
    if not timed:
        notes.append("no candidate within the accuracy budget to time")
        return None
    # One thread each unless measure.threads says otherwise: on a loaded machine a multi-threaded
    # runtime waits for its slowest thread, and runtimes called in turn fight over the cores.
    threads = timing_threads(pipeline)
    settings = pipeline.measure.model_copy(update={"latency": True, "compare": "interleaved", "threads": threads})
    notes.append(
        f"timed with {threads} intra-op thread{'s' if threads > 1 else ''} for torch and onnxruntime alike"
        + ("" if pipeline.measure.threads else " (measure.threads sets it): runtimes called in turn on all cores fight over them")
    )
    inputs = seeded_inputs(pipeline.model.input_defs(), pipeline.spec.seed, device)
    plan = TimingPlan("interleaved", "optkit optimize: every candidate within the budget beside the eager baseline", {})
    timing = StageTiming(plan, settings, inputs, device, len(timed))
    results = [StageResult("baseline", None, 0, status=StageStatus.ok)]
    results += [StageResult(c.name, c.chain[-1].pass_name, i, status=StageStatus.ok) for i, c in enumerate(timed, start=1)]
    with configure_timing(settings.threads, settings.cudnn_benchmark, settings.flush_denormal):
        timing.keep(results[0], model.to(device).eval())
        for result, candidate in zip(results[1:], timed, strict=True):
            timing.keep(result, _load_product(candidate, pipeline, device, threads))
        timing.time_side_by_side(results)
    for candidate, result in zip([baseline, *timed], results, strict=True):
        metrics = result.metrics
        candidate.latency_ms = metrics.latency_ms.model_dump(mode="json", exclude={"samples"}) if metrics.latency_ms else None
        candidate.speedup = metrics.speedup.model_dump(mode="json") if metrics.speedup else None
        if candidate is not baseline:
            candidate.status = "timed"
    return timing.summary.model_dump(mode="json", exclude_none=True)


def timing_threads(pipeline: Pipeline) -> int:
    """Intra-op threads of the side-by-side timing: ``measure.threads``, else one."""
    return pipeline.measure.threads or 1


def _load_product(candidate: Candidate, pipeline: Pipeline, device: Any, threads: int) -> Any:
    """A candidate's cached product, ready to time: an ONNX file (``threads`` intra-op threads), or the saved module."""
    assert candidate.product is not None
    if candidate.product.suffix == ".onnx":
        # As many threads as torch: onnxruntime's default pool beside torch's OpenMP threads, called
        # in turn in one loop, slows both down by orders of magnitude on a small machine
        # (digits CNN, 2 cores: eager 1.5 ms alone, 90 ms beside a 2-thread session).
        return OnnxArtifact(path=candidate.product, source_model=None, threads=threads)
    spec = ModelSpec.model_validate(
        {
            "source": f"file:{candidate.product}",
            "trust_checkpoint": True,
            "input_shape": pipeline.model.model_dump(mode="json")["input_shape"],
        }
    )
    model, _ = Host().load_model(spec, candidate.product.parent)
    return model.to(device).eval()


def choose(candidates: list[Candidate], spec: OptimizeSpec) -> Candidate | None:
    """The best timed candidate by ``spec.target``: the largest speed-up (latency), fewest MACs or smallest size.

    For latency, only a candidate whose speed-up interval lies above 1 is chosen (else the eager model stays).
    """
    timed = [c for c in candidates if c.status == "timed"]
    if spec.target == "latency":
        timed = [c for c in timed if ((c.speedup or {}).get("low") or 0.0) > 1.0]

    def score(c: Candidate) -> float:
        if spec.target == "latency":
            return -float((c.speedup or {}).get("value") or 0.0)
        figure = c.macs if spec.target == "macs" else c.size_bytes
        return float(figure) if figure is not None else math.inf

    return min(timed, key=score, default=None)


def _write_pipeline(pipeline: Pipeline, candidate: Candidate, folder: Path) -> Path:
    """The pipeline file that reproduces ``candidate`` from the model (``optkit run`` it)."""
    folder.mkdir(parents=True, exist_ok=True)
    model, _ = absolute_sections(pipeline)
    passes = [step.as_pass_item() for step in candidate.chain]
    document = pipeline_document(pipeline, model, passes, folder.parent / "reruns" / candidate.name, latency=True)
    # The threads the search timed with (rung 4), so that optkit run reproduces its speed-up.
    document["measure"]["threads"] = timing_threads(pipeline)
    path = folder / f"{candidate.name}.yaml"
    header = f"# optkit optimize candidate {candidate.name}: optkit run {path.name}\n"
    path.write_text(header + yaml.safe_dump(document, sort_keys=False, default_flow_style=None), encoding="utf-8")
    return path


def _save_chosen(chosen: Candidate, output: Path) -> None:
    """``chosen.yaml`` (runs into ``chosen-run/``) and the chosen product beside it."""
    assert chosen.pipeline_file is not None and chosen.product is not None
    document = yaml.safe_load(Path(chosen.pipeline_file).read_text(encoding="utf-8"))
    document["output"] = str(output / "chosen-run")
    header = f"# the chain optkit optimize chose ({chosen.name}): optkit run chosen.yaml reproduces it\n"
    (output / "chosen.yaml").write_text(header + yaml.safe_dump(document, sort_keys=False, default_flow_style=None), encoding="utf-8")
    shutil.copy2(chosen.product, output / f"chosen{chosen.product.suffix}")
