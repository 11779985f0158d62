"""fuse_bn against the unfused model and torch.fx's fuser, side by side (issues #5 and #15).

For each model (``library:name``, see ``benchmarks/model_sources.py``; random weights: latency does
not depend on the values) four variants run: the unfused eval model, the model after optkit's
``fuse_bn`` with the installed module rules (its own classes kept, each BatchNorm an
``nn.Identity``, a timm ``BatchNormAct2d`` its activation, an Ultralytics ``Conv`` fused as
Ultralytics fuses it), the same with ``graph_module: true`` (one flat fx GraphModule, the form
torch.fx's fuser returns, where the model traces), and the model after
``torch.fx.experimental.optimization.fuse`` (which fuses exact ``nn.BatchNorm2d`` after
``nn.Conv2d`` only, and needs a model that traces).
They are timed side by side by optkit's own loop (``optkit.measure.latency.time_round_robin``: one call
each per round in a shuffled order, CUDA events on a GPU), so noise on a shared machine hits all
of them alike. Each speed-up is the median of the per-round ratios (unfused / fused) with its
95% order-statistic interval widened by the 5% run-to-run margin, as ``optkit run`` reports it; a speed-up whose interval includes 1
is a tie. The outputs of the fused variants are checked against the unfused one.

Writes ``fuse_bn_latency.md`` and ``.json`` to ``--output`` (default benchmarks/results).

    .venv/bin/python benchmarks/fuse_bn_latency.py                      # CPU, batch 1, 224x224, 1 thread
    .venv/bin/python benchmarks/fuse_bn_latency.py --device cuda --rounds 200
    .venv-ultralytics/bin/python benchmarks/fuse_bn_latency.py          # + the ultralytics: rows

"Pairs" counts the BatchNorms folded (``details.batchnorms_folded``; fx: BatchNorms gone).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse as fx_fuse

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_sources  # noqa: E402

from optkit.config.pipeline import MeasureSpec
from optkit.files import atomic_write_text  # noqa: E402
from optkit.measure.drift import compare_outputs
from optkit.measure.intervals import speedup
from optkit.measure.latency import Contender, configure_timing, time_round_robin
from optkit.measure.noise import check_noise
from optkit.reporting.tables import format_speedup, noise_warning
from optkit.run.device import select_device  # noqa: E402
from optkit.run.environment import environment  # noqa: E402
from optkit_plugins.fuse_bn import fuse_batchnorm  # noqa: E402

log = logging.getLogger("fuse_bn_latency")

MODELS = [
    "torchvision:resnet18", "torchvision:resnet50", "torchvision:mobilenet_v3_large", "torchvision:efficientnet_b0",
    "timm:efficientnet_b0", "timm:regnety_008", "timm:regnetx_004", "ultralytics:yolov8s.yaml", "ultralytics:yolo11n.yaml",
]


def _first_tensor(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else next(t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor))


def _batchnorm_calls(graph_module: torch.fx.GraphModule) -> int:
    return sum(
        node.op == "call_module" and isinstance(graph_module.get_submodule(node.target), nn.modules.batchnorm._BatchNorm)
        for node in graph_module.graph.nodes
    )


def build_variants(source: str, x: torch.Tensor, device: torch.device) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """The variants of ``source`` on ``device``, and what fusing them did."""
    model = model_sources.build(source).to(device)
    with torch.no_grad():
        model(x)  # a first call, as any user makes (YOLO's Detect caches its anchors)
    rules = model_sources.rules()
    result = fuse_batchnorm(model, x, rules=rules)
    graph = fuse_batchnorm(model, x, graph_module=True, rules=rules)
    variants = {"unfused": model, "optkit": result.model, "optkit_graph": graph.model}
    info: dict[str, Any] = {"optkit_pairs": result.batchnorms_folded, "optkit_method": result.method, "optkit_notes": graph.notes}
    try:
        variants["fx"] = fx_fuse(model, inplace=False)
        # BatchNorm modules fx calls before and after fusing (it traces through modules it does not know).
        info["fx_pairs"] = _batchnorm_calls(torch.fx.symbolic_trace(model)) - _batchnorm_calls(variants["fx"])
    # fx's fuser traces the whole model; a model it cannot trace is reported, not fatal.
    except Exception as exc:  # noqa: BLE001
        info["fx_error"] = f"{type(exc).__name__}: {exc}"
    with torch.inference_mode():
        reference = _first_tensor(model(x))
        for variant in ("optkit", "optkit_graph", "fx"):
            if variant in variants:
                info[f"{variant}_max_abs_diff"] = compare_outputs(_first_tensor(variants[variant](x)), reference).max_abs
    return variants, info


def _figure(reference: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any] | None:
    """The paired speed-up of ``variant`` over ``reference`` as the results JSON holds it."""
    figure = speedup(reference, variant, paired=True)
    return figure.model_dump(mode="json") if figure is not None else None


def benchmark_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    x = model_sources.example_input(name, args.size, args.batch).to(device)
    variants, info = build_variants(name, x, device)
    contenders = {variant: Contender(model, cuda_events=device.type == "cuda") for variant, model in variants.items()}
    latency = time_round_robin(contenders, x, device, args.warmup, args.rounds)
    speedups = {variant: _figure(latency["unfused"], latency[variant]) for variant in latency if variant != "unfused"}
    row = {"model": name, **info, "latency_ms": latency, "speedup": speedups}
    if "fx" in latency:  # fx median over optkit's, per round: >= 1 when optkit is at least as fast
        row["optkit_vs_fx"] = _figure(latency["fx"], latency["optkit"])
        row["optkit_graph_vs_fx"] = _figure(latency["fx"], latency["optkit_graph"])
    log.info("%s: %s", name, {k: format_speedup(v) for k, v in speedups.items()})
    return row


def render_markdown(rows: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# fuse_bn latency: unfused vs optkit fuse_bn vs torch.fx fuse, side by side",
        "",
        f"Batch {args.batch}, {args.size}x{args.size}, {env.get('device')}, {args.threads} torch thread(s), "
        f"{args.rounds} round-robin rounds after {args.warmup} warm-up rounds; torch {env.get('torch')}.",
        "Speed-up = median over rounds of unfused / fused time, with its 95% interval (order statistics); "
        "`vs fx` = the same for fx / optkit (> 1: optkit faster). **tie** = the interval includes 1: no speed-up or "
        "slow-down is claimed. `optkit` keeps the model's classes; `graph` is `fuse_bn` with `graph_module: true`. "
        "The p50 columns are each variant's own median: when the load changes during the run they mix different "
        "loads, and only the per-round ratios compare like with like.",
        "",
        "| model | pairs (optkit / fx) | unfused p50 ms | optkit p50 ms | graph p50 ms | fx p50 ms | optkit speedup | graph speedup | fx speedup | optkit vs fx | graph vs fx | max abs diff (optkit / graph / fx) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['model']} | not run: {row['skipped']} |" + " |" * 10)
            continue
        lat = row["latency_ms"]
        fx_p50 = f"{lat['fx']['p50']:.2f}" if "fx" in lat else "n/a"  # fx needs a model that traces as a whole (YOLO does not)
        fx_diff = f"{row['fx_max_abs_diff']:.2g}" if "fx_max_abs_diff" in row else "n/a"
        lines.append(
            f"| {row['model']} | {row['optkit_pairs']} / {row.get('fx_pairs', 'n/a')} | {lat['unfused']['p50']:.2f} | "
            f"{lat['optkit']['p50']:.2f} | {lat['optkit_graph']['p50']:.2f} | {fx_p50} | {format_speedup(row['speedup']['optkit'])} | "
            f"{format_speedup(row['speedup']['optkit_graph'])} | {format_speedup(row['speedup'].get('fx'))} | "
            f"{format_speedup(row.get('optkit_vs_fx'))} | {format_speedup(row.get('optkit_graph_vs_fx'))} | "
            f"{row['optkit_max_abs_diff']:.2g} / {row['optkit_graph_max_abs_diff']:.2g} / {fx_diff} |"
        )
    lines += ["", f"Command: `{' '.join([os.path.relpath(sys.executable), *sys.argv])}`", ""]
    warning = noise_warning(env.get("noise"))
    if warning:
        lines[3:3] = [f"**{warning}** Re-run on a quiet machine before quoting these figures.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, help="torchvision:, timm: or ultralytics: names")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fixed for the run)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    configure_timing(args.threads)  # as optkit run does: threads, and denormals flushed
    device = select_device(args.device)
    env = {**environment(device), "noise": check_noise(device, MeasureSpec().noise_max_cv)}
    rows = []
    for name in args.models:
        missing = model_sources.needs_missing_library(name)
        rows.append({"model": name, "skipped": missing} if missing else benchmark_model(name, args, device))
    stem = "fuse_bn_latency" if device.type == "cpu" else f"fuse_bn_latency_{device.type}"
    payload = {"environment": env, "settings": {k: str(v) for k, v in vars(args).items()}, "results": rows}
    atomic_write_text(args.output / f"{stem}.json", json.dumps(payload, indent=2))
    atomic_write_text(args.output / f"{stem}.md", render_markdown(rows, env, args))
    print(render_markdown(rows, env, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
