"""Benchmark: ``optkit optimize`` on resnet50 against the hand-written resnet50 pipelines of the
README's benchmarks (issue #28).

resnet50 has random weights (``weights=None``), so accuracy is replaced by top-1 agreement with the
eager model on a ``python:`` dataset of unlabeled synthetic images (label -1; ``optimize`` then
judges its budget by agreement). Random weights make agreement a weak check: it says a candidate
keeps the float model's predictions on these inputs, not what a trained model would lose.

1. ``optkit optimize`` (the CLI, as a user runs it) with ``--max-accuracy-drop``, ``--target latency``,
   ``--runtime onnxruntime`` and ``--budget-minutes``.
2. The hand-written resnet50 pipelines of ``benchmarks/results/`` (``optkit run``, same data):
   - ``fuse_export`` and ``prune_fuse_export`` of the model zoo (``benchmarks/pipelines/zoo.yaml``);
   - int8 of ``benchmarks/results/quantize_onnx.md`` (export, static int8, qoperator per-channel);
   - ``prune_channels`` latency 0.5 under onnxruntime (``prune_latency_target.md``), at the amount
     that search settled on (0.4563, l2), then export: the bisection itself takes half an hour.
3. The eager model, the chosen product and every hand-written product, timed side by side in one
   round-robin loop after the noise check: each speed-up over eager and the chosen one's over each
   hand-written one (median of the per-round ratios, 95% interval widened by the run-to-run margin).

    .venv/bin/python benchmarks/optimize_resnet50.py                      # 20-minute search
    .venv/bin/python benchmarks/optimize_resnet50.py --budget-minutes 10 --eval-samples 32

Writes ``benchmarks/results/optimize_resnet50.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from optkit import OnnxArtifact
from optkit.config.pipeline import MeasureSpec
from optkit.files import atomic_write_text
from optkit.measure.cpu import CpuInfo
from optkit.measure.intervals import speedup
from optkit.measure.latency import Contender, configure_timing, time_round_robin
from optkit.measure.noise import check_noise
from optkit.run.environment import environment
from optkit.run.runner import run_pipeline

HERE = Path(__file__).parent

#: The hand-written resnet50 pipelines of the README's benchmarks: name → (passes, where it comes from).
HAND_WRITTEN: dict[str, tuple[list[Any], str]] = {
    "fuse_export": (["fuse_bn", "export_onnx"], "model zoo (benchmarks/pipelines/zoo.yaml)"),
    "prune_fuse_export": (
        [{"prune_l1": {"mode": "channels", "amount": 0.3}}, "fuse_bn", "export_onnx"],
        "model zoo (benchmarks/pipelines/zoo.yaml)",
    ),
    "export_int8": (["export_onnx", {"quantize_onnx": {"mode": "static"}}], "quantize_onnx.md (static int8, qoperator per-channel)"),
    "prune_latency0.5_export": (
        [{"prune_channels": {"importance": "l2", "amount": 0.4563}}, "export_onnx"],
        "prune_latency_target.md (the amount its latency-0.5 search reached)",
    ),
}


def pipeline_document(args: argparse.Namespace, passes: list[Any], output: Path) -> dict[str, Any]:
    """resnet50 (random weights) with unlabeled synthetic images as data.eval (and calibration)."""
    images = {"source": "python:quantize_auto:synthetic_images", "kwargs": {"count": args.eval_samples, "size": 224, "seed": 2}}
    return {
        "model": {"source": f"torchvision:{args.model}", "weights": "none", "input_shape": [1, 3, 224, 224]},
        "device": "cpu",
        "measure": {"threads": args.threads, "warmup": 3, "iters": 20},
        "data": {"eval": {**images, "batch_size": 16}},
        "optimize": {"max_accuracy_drop": args.max_drop, "target": "latency", "runtime": "onnxruntime", "budget_minutes": args.budget_minutes},
        "passes": passes,
        "output": str(output),
    }


def product_of(run_dir: Path) -> Path:
    """The last ONNX artifact of a run folder."""
    report = json.loads((run_dir / "report.json").read_text())
    artifacts = [a for stage in report["stages"] for a in stage.get("artifacts") or [] if a.endswith(".onnx")]
    return run_dir / artifacts[-1]


def agreement_of(run_dir: Path) -> float | None:
    report = json.loads((run_dir / "report.json").read_text())
    return ((report["stages"][-1]["metrics"].get("agreement") or {}).get("top1")) if report["stages"] else None


def callable_of(path: Path, threads: int) -> Any:
    if path.suffix == ".onnx":
        return OnnxArtifact(path=path, threads=threads).load(torch.device("cpu"))
    model = torch.load(path, weights_only=False)  # optimize's own chosen.pt, written by this run
    return model.eval()


def time_all(products: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    """Eager and every product in one round-robin loop; speed-ups over eager, and the chosen one's over each."""
    import torchvision

    device = torch.device("cpu")
    torch.manual_seed(0)
    eager = torchvision.models.get_model(args.model, weights=None).eval()
    contenders = {"eager": Contender(eager), **{name: Contender(callable_of(path, args.threads)) for name, path in products.items()}}
    example = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    noise = check_noise(device, MeasureSpec().noise_max_cv)
    records = time_round_robin(contenders, example, device, args.warmup, args.rounds)
    figures: dict[str, Any] = {"noise": noise, "rounds": args.rounds, "p50_ms": {}, "speedup_vs_eager": {}, "chosen_vs": {}}
    for name, record in records.items():
        figures["p50_ms"][name] = {k: record[k] for k in ("p50", "p50_interval", "p10", "p90")}
        if name != "eager":
            figures["speedup_vs_eager"][name] = speedup(records["eager"], record, paired=True).model_dump()  # type: ignore[union-attr]
    for name in products:
        if name != "chosen" and "chosen" in records:
            figures["chosen_vs"][name] = speedup(records[name], records["chosen"], paired=True).model_dump()  # type: ignore[union-attr]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="a torchvision classifier (the hand-written pipelines are resnet50's)")
    parser.add_argument("--budget-minutes", type=float, default=20)
    parser.add_argument("--max-drop", type=float, default=0.01, help="agreement the chosen model may lose")
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--work", type=Path, default=Path("runs/optimize_resnet50"))
    parser.add_argument("--output", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))  # python:quantize_auto:... in jobs
    sys.path.insert(0, str(HERE))
    args.work.mkdir(parents=True, exist_ok=True)

    search_file = args.work / "resnet50.yaml"
    search_file.write_text(yaml.safe_dump(pipeline_document(args, [], args.work / "unused"), sort_keys=False))
    started = time.perf_counter()
    command = [str(Path(sys.executable).parent / "optkit"), "optimize", str(search_file), "--out", str(args.work / "search")]
    subprocess.run(command, check=True)
    search_seconds = time.perf_counter() - started
    result = json.loads((args.work / "search" / "optimize.json").read_text())

    hand: dict[str, Any] = {}
    products: dict[str, Path] = {}
    chosen = result.get("chosen")
    if chosen is not None:
        products["chosen"] = next(p for p in (args.work / "search" / f"chosen{suffix}" for suffix in (".onnx", ".pt")) if p.is_file())
    for name, (passes, origin) in HAND_WRITTEN.items():
        path = args.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(pipeline_document(args, passes, args.work / name), sort_keys=False))
        start = time.perf_counter()
        report, _ = run_pipeline(path, overwrite=True)
        hand[name] = {"passes": passes, "from": origin, "status": report.status.value, "seconds": round(time.perf_counter() - start, 1)}
        if report.status.value == "ok":
            hand[name]["agreement"] = agreement_of(args.work / name)
            products[name] = product_of(args.work / name)
        else:
            hand[name]["error"] = report.error
    with configure_timing(args.threads):
        timing = time_all(products, args)
    summary = {
        "benchmark": "optimize_resnet50",
        "environment": environment(torch.device("cpu")),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "search_seconds": round(search_seconds, 1),
        "settings": result["settings"],
        "judged_by": result.get("judged_by"),
        "baseline": result["baseline"],
        "chosen": chosen,
        "candidates": [{k: c.get(k) for k in ("name", "status", "note", "top1", "speedup")} for c in result["candidates"]],
        "stages_reused": result["stages_reused"],
        "stages_computed": result["stages_computed"],
        "hand_written": hand,
        "timing": timing,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output / "optimize_resnet50.json", json.dumps(summary, indent=2, default=str) + "\n")
    atomic_write_text(args.output / "optimize_resnet50.md", render_markdown(summary, args))
    print(render_markdown(summary, args))
    return 0


def _interval(figure: dict[str, Any] | None) -> str:
    if not figure or figure.get("value") is None:
        return "–"
    text = f"{figure['value']:.2f}× [{figure['low']:.2f}–{figure['high']:.2f}]"
    return ("tie " + text) if figure["low"] <= 1.0 <= figure["high"] else text


def render_markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
    env = summary["environment"]
    timing = summary["timing"]
    noise = timing["noise"]
    budget = summary["settings"]["max_accuracy_drop"]
    lines = [
        "# `optkit optimize` on resnet50 against the hand-written pipelines",
        "",
        f"`{summary['command']}` · CPU {CpuInfo.from_dict(env['cpu']).describe()} · torch {env.get('torch')} · "
        f"onnxruntime {env.get('onnxruntime')} · {args.threads} threads · input 1x3x224x224 · noise check: "
        f"{'busy' if noise.get('noisy') else 'quiet'} (cv {noise.get('cv', float('nan')):.1%}, CPU share {noise.get('cpu_share', float('nan')):.2f})",
        "",
        f"resnet50 with **random weights**; accuracy is top-1 agreement with the eager model on {args.eval_samples} unlabeled synthetic "
        f"images (`python:quantize_auto:synthetic_images`, label -1; judged by: {summary['judged_by']}). Budget: at most "
        f"{budget * 100:g} points of agreement lost. Random weights make agreement a weak check.",
        "",
        f"Search: {summary['search_seconds']:.0f} s of a {summary['settings']['budget_minutes']:g}-minute budget; "
        f"stages computed {summary['stages_computed']}, reused {summary['stages_reused']}. "
        f"Chosen: **{(summary['chosen'] or {}).get('name', 'none')}**.",
        "",
        "## Side by side (one round-robin loop)",
        "",
        f"{timing['rounds']} rounds; speed-ups are the median of the per-round ratios with the 95% interval (widened by the 5% run-to-run margin); "
        "`tie` when it includes 1.",
        "",
        "| model | from | agreement | within budget | p50 ms | speed-up vs eager | chosen's speed-up over it |",
        "|---|---|---|---|---|---|---|",
        f"| eager | the model | 100.00% | yes | {timing['p50_ms']['eager']['p50']:.1f} | | |",
    ]
    chosen = summary["chosen"]
    if chosen is not None:
        lines.append(
            f"| chosen: {chosen['name']} | optkit optimize | {chosen['top1']:.2%} | yes | {timing['p50_ms']['chosen']['p50']:.1f} | "
            f"{_interval(timing['speedup_vs_eager'].get('chosen'))} | |"
        )
    for name, row in summary["hand_written"].items():
        if row["status"] != "ok":
            lines.append(f"| {name} | {row['from']} | failed: {row.get('error')} | | | | |")
            continue
        agreement = row.get("agreement")
        within = "yes" if agreement is not None and 1.0 - agreement <= budget else "no"
        lines.append(
            f"| {name} | {row['from']} | {agreement:.2%} | {within} | {timing['p50_ms'][name]['p50']:.1f} | "
            f"{_interval(timing['speedup_vs_eager'].get(name))} | {_interval(timing['chosen_vs'].get(name))} |"
        )
    lines += ["", "## Candidates of the search", "", "| candidate | status | agreement | speed-up vs eager (search's timing) |", "|---|---|---|---|"]
    for c in summary["candidates"]:
        top1 = "–" if c.get("top1") is None else f"{c['top1']:.2%}"
        status = c["status"] + (f": {c['note']}" if c.get("note") else "")
        lines.append(f"| {c['name']} | {status} | {top1} | {_interval(c.get('speedup'))} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
