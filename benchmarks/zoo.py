"""The model-zoo benchmark: the standard pipelines over torchvision models, one combined report.

The job list is the sweep file ``benchmarks/pipelines/zoo.yaml`` (13 models × 4 pipelines: fuse;
fuse + export; prune channels + fuse + export; reclassify + tta); this script filters it and runs
it through the same sweep machinery as ``optkit sweep``, then writes ``report.md``,
``report.json``, ``report.html`` and ``plots/`` to ``benchmarks/results/<device>/``.

Usage::

    python benchmarks/zoo.py                                   # all models, CPU, 224x224
    python benchmarks/zoo.py --models resnet18,mobilenet_v2 --input-size 160
    python benchmarks/zoo.py --device cuda                     # CUDA-synchronized latency
    python benchmarks/zoo.py --executor ray --ray-address auto # on a Ray cluster
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from optkit.config.sweep import SweepFile, load_sweep
from optkit.reporting.writing import write_comparison_report
from optkit.sweep.driver import run_sweep
from optkit.sweep.executors import EXECUTORS, make_executor
from optkit.sweep.jobs import JobOutcome

__all__ = ["ZOO_FILE", "main", "select"]

log = logging.getLogger("optkit.benchmarks.zoo")

ROOT = Path(__file__).resolve().parent
ZOO_FILE = ROOT / "pipelines" / "zoo.yaml"


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def select(sweep: SweepFile, models: list[str] | None, pipelines: list[str] | None) -> SweepFile:
    """The zoo restricted to ``models`` and ``pipelines`` (by label); ``None`` keeps all.

    Raises:
        SystemExit: a name that is not in the zoo (with the known names).
    """
    updates = {}
    if models:
        known = {m.label: m for m in sweep.models}
        unknown = [m for m in models if m not in known]
        if unknown:
            raise SystemExit(f"--models: not in the zoo: {', '.join(unknown)} (known: {', '.join(known)})")
        updates["models"] = [known[m] for m in models]
    if pipelines:
        unknown = [p for p in pipelines if p not in sweep.pipelines]
        if unknown:
            raise SystemExit(f"--pipelines: not in the zoo: {', '.join(unknown)} (known: {', '.join(sweep.pipelines)})")
        updates["pipelines"] = {p: sweep.pipelines[p] for p in pipelines}
    return sweep.model_copy(update=updates)


def _device_folder(device: str) -> str:
    """``cpu`` or ``cuda`` (the results folder name), resolving ``auto``."""
    device = device.lower()
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu" if device == "cpu" else "cuda"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="Comma-separated model labels (default: all 13).")
    parser.add_argument("--pipelines", help="Comma-separated pipeline names (default: all 4).")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu).")
    parser.add_argument("--input-size", type=int, default=224, help="Square input size (default 224).")
    parser.add_argument("--warmup", type=int, help="Warm-up calls per stage (default: the zoo file's).")
    parser.add_argument("--iters", type=int, help="Timed calls per stage (default: the zoo file's).")
    parser.add_argument("--threads", type=int, help="torch/onnxruntime intra-op threads (default: the zoo file's, 1).")
    parser.add_argument("--executor", choices=EXECUTORS, default="local")
    parser.add_argument("--workers", type=int, default=1, help="Jobs at once (keep 1 for latency figures).")
    parser.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")
    parser.add_argument("--runs", type=Path, help="Folder for the job runs (default runs/zoo-<device>).")
    parser.add_argument("--results", type=Path, help="Report folder (default benchmarks/results/<device>).")
    parser.add_argument("--note", action="append", default=[], help="A line for the report header (repeatable).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    sweep = select(load_sweep(ZOO_FILE), _names(args.models), _names(args.pipelines))
    measure = sweep.measure.model_copy(update={k: v for k, v in {"warmup": args.warmup, "iters": args.iters, "threads": args.threads}.items() if v is not None})
    sweep = sweep.model_copy(update={"device": args.device, "input_size": args.input_size, "measure": measure})
    folder = _device_folder(args.device)
    results = args.results or ROOT / "results" / folder
    runs = args.runs or Path("runs") / f"zoo-{folder}"
    command = "python benchmarks/zoo.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    def progress(outcome: JobOutcome, done: int, total: int) -> None:
        log.info("[%d/%d] %s: %s (%.1f s)%s", done, total, outcome.job.name, outcome.status, outcome.seconds,
                 f"\n  {outcome.error.splitlines()[-1]}" if outcome.error else "")

    executor = make_executor(args.executor, args.workers, args.ray_address)
    result = run_sweep(sweep, executor, runs, on_done=progress, title=f"optkit model zoo · {folder}", command=command)
    meta = {**result.meta, "notes": [
        f"{len(sweep.models)} models × {len(sweep.pipelines)} pipelines, input [1, 3, {args.input_size}, {args.input_size}], "
        f"random weights, warmup {measure.warmup} / iters {measure.iters}, {measure.threads or 'default'} thread(s), "
        f"{args.workers} job(s) at once",
        *args.note,
    ]}
    written = write_comparison_report(result.runs, results, meta=meta, status=result.status)
    log.info("%d/%d jobs ok → %s, %s", len(result.outcomes) - len(result.failed), len(result.outcomes),
             written["markdown"], written["html"])
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
