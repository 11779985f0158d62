"""Benchmark: ``prune_channels`` with ``target: {latency: G, runtime: onnxruntime}`` (issue #24).

The model (torchvision resnet50 by default, ``weights=None``: latency does not depend on the
weights) is pruned by the pass itself, in process, as a pipeline stage would prune it: the search
exports every candidate as ``export_onnx`` does and times it side by side with the model before
under onnxruntime; the stage's details give the reached ratio with its interval and the trail.

Then a *check* the search did not see: the pruned model and the model before are exported once
more and timed side by side for ``--rounds`` rounds (the median of the per-round ratios with its
95% order-statistic interval, widened by the run-to-run margin, as ``optkit run`` reports
speed-ups). The noise check (``optkit.measure.noise``) runs before the stage and before the check.

    .venv/bin/python benchmarks/prune_latency_target.py                          # resnet50, 1x3x224x224, goal 0.5
    .venv/bin/python benchmarks/prune_latency_target.py --model resnet18 --size 128 --goal 0.6

Writes ``benchmarks/results/prune_latency_target.md`` and ``.json`` (``--output`` changes the stem).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

from optkit.errors import StageError
from optkit.files import atomic_write_text
from optkit.measure.cpu import CpuInfo, cpu_info
from optkit.measure.latency import configure_timing
from optkit.measure.noise import check_noise
from optkit.passes import PassContext
from optkit.run.environment import environment
from optkit_plugins.prune_channels import PruneChannels
from optkit_plugins.prune_channels.latency import LatencyRatio

log = logging.getLogger("benchmarks.prune_latency_target")

RESULTS = Path(__file__).resolve().parent / "results"
NOISE_MAX_CV = 0.10


def check(model: torch.nn.Module, pruned: torch.nn.Module, inputs: torch.Tensor, runtime: str, rounds: int) -> dict[str, Any]:
    """The pruned model's latency over the model's before, timed anew side by side for ``rounds`` rounds."""
    with LatencyRatio(copy.deepcopy(model), inputs, torch.device("cpu"), runtime, rounds) as timed:
        timed(pruned)
        return timed.last


def markdown(result: dict[str, Any]) -> str:
    meta, stage, checked = result["meta"], result["stage"], result["check"]
    target = stage.get("target", {})
    timing = target.get("timing", {})
    lines = [
        f"# `prune_channels` latency target: {meta['model']} under {meta['runtime']}",
        "",
        f"`{meta['command']}` · {meta['date']} · CPU {CpuInfo.from_dict(meta['cpu']).describe()} · torch {meta['torch']} · "
        f"onnxruntime {meta['onnxruntime']} · {meta['threads']} thread(s) · input {meta['input']}",
        "",
        f"Options: `{json.dumps(meta['options'])}`. Stage status **{stage['status']}** in {stage['seconds']:.0f} s "
        f"({target.get('exports', {}).get('count', 0)} exports, {target.get('exports', {}).get('seconds', 0):.0f} s of them).",
        "",
        "| measured by | goal | latency kept (median ratio) | interval (95%, ±5% run-to-run) | statistical interval | "
        "pruned ms | before ms | rounds | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figures in (("the stage (its last timing)", timing), ("the check (fresh exports, timed anew)", checked)):
        if not figures:
            continue
        low, high = figures["interval"]
        verdict = "contains the goal" if low <= meta["goal"] <= high else ("below the goal" if high < meta["goal"] else "ABOVE the goal")
        s_low, s_high = figures["statistical_interval"]
        lines.append(
            f"| {name} | {meta['goal']} | {figures['ratio']:.3f} | [{low:.3f}, {high:.3f}] | [{s_low:.3f}, {s_high:.3f}] | "
            f"{figures['pruned_ms']:.1f} | {figures['baseline_ms']:.1f} | {figures['rounds']} | {verdict} |"
        )
    lines += ["", "Noise check (robust CV of a fixed matrix product; CPU share of this process):", ""]
    for when, noise in result["noise"].items():
        lines.append(f"- {when}: cv {noise['cv']:.1%}, CPU share {noise.get('cpu_share', 1):.2f}, noisy: {noise['noisy']}"
                     + (f" ({noise['why']})" if noise.get("why") else ""))
    if stage.get("steps"):
        lines += ["", "How it was found: " + stage["steps"][-1]["found_by"] + ".", "", "| amount | latency kept | low | high |", "|---|---|---|---|"]
        for row in stage["steps"][-1]["tried"]:
            lines.append("| " + " | ".join(f"{x:.4f}" for x in row) + " |")
    if stage.get("error"):
        lines += ["", f"Stage error: {stage['error']}"]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="a torchvision model name (weights=None)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--goal", type=float, default=0.5)
    parser.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "torch"))
    parser.add_argument("--importance", default="l2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60, help="rounds of the check after the stage")
    parser.add_argument("--output", type=Path, default=RESULTS / "prune_latency_target")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import onnxruntime

    configure_timing(args.threads)  # as the runner does: threads, and denormals flushed (weights=None)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    inputs = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    options = {"importance": args.importance, "target": {"latency": args.goal, "runtime": args.runtime}}
    result: dict[str, Any] = {
        "meta": {
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu_info().as_dict(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "threads": torch.get_num_threads(), "model": f"torchvision:{args.model}", "input": f"1x3x{args.size}x{args.size}",
            "goal": args.goal, "runtime": args.runtime, "options": options, "environment": environment(),
        },
        "noise": {"before the stage": check_noise(torch.device("cpu"), NOISE_MAX_CV)},
    }
    ctx = PassContext(torch.device("cpu"), inputs, RESULTS, logging.getLogger("optkit.stage.prune_channels"))
    start = time.perf_counter()
    try:
        pruned = PruneChannels(PruneChannels.Options.model_validate(options)).apply(model, ctx)
        status, error = "ok", None
    except StageError as exc:
        pruned, status, error = None, "failed", str(exc)
    result["stage"] = {"status": status, "error": error, "seconds": time.perf_counter() - start, **ctx.details}
    result["noise"]["before the check"] = check_noise(torch.device("cpu"), NOISE_MAX_CV)
    result["check"] = check(model, pruned, inputs, args.runtime, args.rounds) if pruned is not None else {}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output.with_suffix(".json"), json.dumps(result, indent=2, default=str))
    atomic_write_text(args.output.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
