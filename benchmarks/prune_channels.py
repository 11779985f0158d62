"""Benchmark: prune_l1 ``mode: channels`` against the unpruned model and against Torch-Pruning.

For each model and amount, three variants are built from the same randomly initialised model:
the unpruned model, optkit's ``prune_l1`` (``mode: channels``) and Torch-Pruning's
``MagnitudePruner`` with L1 importance. "amount" means the same in both: the share of output
channels removed from every prunable layer (per layer, not global), the final classifier left
alone, no rounding of widths. MACs are thop's (as optkit reports them), parameters are counted
from ``model.parameters()``, and CPU latency at batch 1 is measured side by side by optkit's own
loop (``optkit.measure.time_round_robin``: one call each per round, in a shuffled order). The
latency ratio is the median of the per-round ratios with its 95% order-statistic interval, as
``optkit run`` reports speed-ups; one whose interval includes 1 is a tie.

Usage (from the repository root)::

    .venv/bin/python benchmarks/prune_channels.py                      # resnet50 + the table
    .venv/bin/python benchmarks/prune_channels.py --models resnet50 --amounts 0.5 --rounds 30

Writes ``benchmarks/results/prune_channels.md`` and ``.json``. Needs ``torch-pruning`` (the
``bench`` extra) for the comparison columns.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from torch import nn

from optkit.config import MeasureSpec
from optkit.files import atomic_write_text
from optkit.measure import Contender, check_noise, configure_timing, count_macs, count_params, speedup, time_round_robin
from optkit.models import find_classifier
from optkit.passes import PassContext
from optkit.reporting import format_count, format_speedup, noise_warning
from optkit.run.environment import environment
from optkit_plugins.prune_l1 import PruneL1

log = logging.getLogger("benchmarks.prune_channels")

RESULTS = Path(__file__).resolve().parent / "results"


def prune_optkit(model: nn.Module, inputs: torch.Tensor, amount: float) -> nn.Module:
    """optkit's prune_l1 in channels mode, as a pipeline stage would run it."""
    ctx = PassContext(torch.device("cpu"), inputs, RESULTS, logging.getLogger("optkit.stage.prune_l1"))
    return PruneL1(PruneL1.Options(mode="channels", amount=amount)).apply(model, ctx)


def prune_torch_pruning(model: nn.Module, inputs: torch.Tensor, amount: float) -> nn.Module:
    """Torch-Pruning's L1 magnitude pruner, per layer, the final classifier ignored."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    head = find_classifier(model)[1]
    pruner = tp.pruner.MagnitudePruner(
        model, inputs, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=amount, ignored_layers=[head]
    )
    pruner.step()
    return model.eval()


def bench_model(name: str, amount: float, size: int, warmup: int, rounds: int, with_tp: bool) -> dict[str, Any]:
    """Build the variants of one model at one amount and measure them."""
    torch.manual_seed(0)
    inputs = torch.randn(1, 3, size, size)
    base = torchvision.models.get_model(name, weights=None).eval()
    builders: dict[str, Callable[[], nn.Module]] = {"unpruned": lambda: base, "optkit": lambda: prune_optkit(base, inputs, amount)}
    if with_tp:
        builders["torch_pruning"] = lambda: prune_torch_pruning(base, inputs, amount)
    variants, row = {}, {"model": name, "amount": amount, "input": [1, 3, size, size], "variants": {}}
    for label, build in builders.items():
        start = time.perf_counter()
        variants[label] = build()
        seconds = time.perf_counter() - start
        with torch.no_grad():
            shape = list(variants[label](inputs).shape)
        row["variants"][label] = {
            "params": count_params(variants[label])["params"],
            "macs": count_macs(variants[label], inputs)["macs"],
            "prune_s": seconds if label != "unpruned" else 0.0,
            "output_shape": shape,
        }
    latency = time_round_robin({label: Contender(model) for label, model in variants.items()}, inputs, torch.device("cpu"), warmup, rounds)
    for label, record in latency.items():
        row["variants"][label]["latency_ms"] = record
    ref = row["variants"]["unpruned"]
    for label, v in row["variants"].items():
        v["macs_ratio"] = ref["macs"] / v["macs"]
        v["params_ratio"] = ref["params"] / v["params"]
        v["latency_ratio"] = speedup(ref["latency_ms"], v["latency_ms"], paired=True) if label != "unpruned" else None
    return row


def render_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table: one line per model, amount and variant."""
    env = meta["environment"]
    warning = noise_warning(env.get("noise"))
    lines = [
        "# Channel pruning: optkit prune_l1 vs Torch-Pruning",
        "",
        f"torch {env.get('torch')}, torchvision {env.get('torchvision')}, {env.get('device')}, "
        f"{meta['threads']} threads, batch 1, {meta['rounds']} interleaved rounds after {meta['warmup']} warm-up rounds. "
        f"Command: `{meta['command']}`",
        "",
        *([f"**{warning}** Re-run on a quiet machine before quoting these figures.", ""] if warning else []),
        "*amount* = share of output channels removed from every prunable layer (both tools, per layer, final "
        "classifier left alone). MACs from thop (GFLOPs = 2 x GMACs). Ratios are unpruned / variant; the latency "
        "ratio is the median of the per-round ratios with its 95% interval (**tie**: the interval includes 1).",
        "",
        "| model | amount | variant | params | MACs | p50 ms | p90 ms | params ratio | MACs ratio | latency ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for label, v in row["variants"].items():
            lat = v["latency_ms"]
            lines.append(
                f"| {row['model']} | {row['amount']} | {label} | {format_count(v['params'])} | {format_count(v['macs'])} | "
                f"{lat['p50']:.2f} | {lat['p90']:.2f} | {v['params_ratio']:.2f}x | {v['macs_ratio']:.2f}x | "
                f"{format_speedup(v['latency_ratio']) if v['latency_ratio'] else ''} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,resnet18,mobilenet_v2,efficientnet_b0", help="comma-separated torchvision names")
    parser.add_argument("--amounts", default="0.3,0.5", help="comma-separated amounts")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-torch-pruning", action="store_true", help="skip the Torch-Pruning columns")
    parser.add_argument("--output", type=Path, default=RESULTS / "prune_channels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    configure_timing(args.threads)  # as optkit run does: threads, and denormals flushed
    noise = check_noise(torch.device("cpu"), MeasureSpec().noise_max_cv)
    rows = []
    for model in args.models.split(","):
        for amount in (float(a) for a in args.amounts.split(",")):
            print(f"{model} amount={amount} ...", file=sys.stderr, flush=True)
            rows.append(bench_model(model, amount, args.size, args.warmup, args.rounds, not args.no_torch_pruning))
    meta = {
        "environment": {**environment(torch.device("cpu")), "noise": noise},
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "rounds": args.rounds,
        "command": "python benchmarks/prune_channels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=2))
    markdown = render_markdown(rows, meta)
    atomic_write_text(args.output.with_suffix(".md"), markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
