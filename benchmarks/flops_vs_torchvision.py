"""optkit's GMACs and parameter counts against torchvision's published figures, whole classification zoo.

For every classification model torchvision lists, the model is built with ``weights=None`` (on the
``meta`` device where its builder allows, so no weight memory is spent) and counted at the input
size of its default weights (``weights.transforms().crop_size``), batch 1. The published figures
are ``weights.meta["_ops"]`` (GMACs) and ``weights.meta["num_params"]``. A model passes when both
are within the tolerance (2%).

A second table gives the repeatability of CPU latency for a few models: the p50 of
``--repeats`` independent timing runs, and their coefficient of variation (std / mean).

Writes ``flops_vs_torchvision.md`` and ``.json`` to ``--output`` (default benchmarks/results).

    .venv/bin/python benchmarks/flops_vs_torchvision.py
    .venv/bin/python benchmarks/flops_vs_torchvision.py --models resnet50 vit_b_16 swin_t --skip-latency
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

from optkit.config.pipeline import MeasureSpec
from optkit.files import atomic_write_text
from optkit.measure.flops import profile_macs
from optkit.measure.latency import configure_timing, time_callable
from optkit.measure.noise import check_noise
from optkit.measure.params import count_params
from optkit.reporting.tables import noise_warning

log = logging.getLogger("flops_vs_torchvision")

TOLERANCE = 0.02
LATENCY_MODELS = ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16")


def builder_kwargs(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """What torchvision's builders set from the weights' meta, which ``weights=None`` would leave out.

    ViTs are built for the weights' image size. GoogLeNet drops its auxiliary heads after loading
    weights, so its published parameter count is without them; Inception v3 keeps its own (its
    published count includes it). Auxiliary heads run only in training, so MACs are unaffected.
    """
    if name.startswith("vit_"):
        return {"image_size": meta["min_size"][0]}
    if name == "googlenet":
        return {"aux_logits": False, "init_weights": False}
    if name == "inception_v3":
        return {"init_weights": False}
    return {}


def build(name: str, kwargs: dict[str, Any]) -> tuple[torch.nn.Module, str]:
    """The model on the meta device, or on the CPU when its builder computes with tensors (RegNet)."""
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(name, weights=None, **kwargs).eval(), "meta"
    except (NotImplementedError, RuntimeError) as exc:
        log.info("%s: cannot build on meta (%s); building on the CPU", name, exc)
        return torchvision.models.get_model(name, weights=None, **kwargs).eval(), "cpu"


def count_model(name: str) -> dict[str, Any]:
    """One row of the GMACs/params table."""
    row: dict[str, Any] = {"model": name}
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except ValueError:
        row["status"] = "no weights (no published figures)"
        return row
    meta = weights.meta
    crop = weights.transforms().crop_size
    size = crop[0] if isinstance(crop, (list, tuple)) else int(crop)
    start = time.perf_counter()
    model, built_on = build(name, builder_kwargs(name, meta))
    profile = profile_macs(model, torch.zeros(1, 3, size, size))
    params = count_params(model)["params"]
    published_gmacs, published_params = meta.get("_ops"), meta.get("num_params")
    row.update(
        weights=str(weights),
        input=[1, 3, size, size],
        built_on=built_on,
        probe=profile.probe,
        published_gmacs=published_gmacs,
        gmacs=profile.macs / 1e9,
        gmacs_thop_modules=profile.module_macs / 1e9,
        gmacs_aten_functional=profile.functional_macs / 1e9,
        published_params=published_params,
        params=params,
        uncounted=profile.uncounted,
        seconds=time.perf_counter() - start,
    )
    row["gmacs_error"] = row["gmacs"] / published_gmacs - 1 if published_gmacs else None
    row["params_error"] = params / published_params - 1 if published_params else None
    within = all(e is not None and abs(e) <= TOLERANCE for e in (row["gmacs_error"], row["params_error"]))
    row["status"] = "ok" if within else "OFF"
    del model
    return row


def latency_repeatability(name: str, repeats: int, warmup: int, iters: int) -> dict[str, Any]:
    """p50 latency of ``repeats`` timing runs of one randomly initialised model on the CPU, and their CV."""
    model = torchvision.models.get_model(name, weights=None).eval()
    inputs = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    records = [time_callable(model, inputs, torch.device("cpu"), warmup, iters) for _ in range(repeats)]
    p50s = [r["p50"] for r in records]
    mean = statistics.fmean(p50s)
    return {
        "model": name,
        "input": [1, 3, 224, 224],
        "p50_ms": p50s,
        "p50_interval_ms": [[r["p50_interval"]["low"], r["p50_interval"]["high"]] for r in records],
        "mean_p50_ms": mean,
        "cv": statistics.stdev(p50s) / mean if len(p50s) > 1 else 0.0,
        "warmup": warmup,
        "iters": iters,
        "threads": torch.get_num_threads(),
    }


def render_markdown(result: dict[str, Any]) -> str:
    rows = result["models"]
    counted = [r for r in rows if "gmacs" in r]
    ok = sum(r["status"] == "ok" for r in counted)
    lines = [
        "# optkit GMACs and parameters vs torchvision's published figures",
        "",
        f"torch {result['environment']['torch']}, torchvision {result['environment']['torchvision']}; "
        f"{ok}/{len(counted)} models within {TOLERANCE:.0%} on both GMACs and parameters. "
        "GMACs are for batch 1 at the default weights' input size; published = `weights.meta['_ops']` "
        "(GMACs) and `['num_params']`. thop/aten: the part counted by thop's module rules and by the "
        "aten-level counter for functional code (attention). GFLOPs = 2 x GMACs.",
        "",
        f"Command: `{result['command']}`",
        "",
        "| model | input | published GMACs | optkit GMACs | Δ | thop | aten | published params | optkit params | Δ | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "gmacs" not in r:
            lines.append(f"| {r['model']} | | | | | | | | | | {r['status']} |")
            continue
        lines.append(
            f"| {r['model']} | {r['input'][-1]} | {r['published_gmacs']:.3f} | {r['gmacs']:.3f} | {r['gmacs_error']:+.2%} "
            f"| {r['gmacs_thop_modules']:.3f} | {r['gmacs_aten_functional']:.3f} | {r['published_params']:,} "
            f"| {r['params']:,} | {r['params_error']:+.2%} | {r['status']} |"
        )
    uncounted = {k: v for r in counted for k, v in r["uncounted"].items()}
    if uncounted:
        lines += ["", "Module types that ran with no counting rule and no counted op (reshapes and the like): "
                  + ", ".join(f"`{k}`" for k in sorted(uncounted)) + "."]
    if result["latency"]:
        lines += [
            "",
            "## Latency repeatability (CPU)",
            "",
            f"p50 of {result['latency'][0]['iters']} timed calls after {result['latency'][0]['warmup']} warm-up, "
            f"repeated {len(result['latency'][0]['p50_ms'])} times, each with its 95% interval (order statistics); "
            "CV = std/mean of those p50s; "
            f"{result['latency'][0]['threads']} threads, {result['environment']['machine']}.",
            "",
            *([f"**{noise_warning(result.get('noise'))}** Re-run on a quiet machine before quoting these figures.", ""]
              if noise_warning(result.get("noise")) else []),
            "| model | input | p50 [95% interval] per repeat (ms) | mean p50 (ms) | CV |",
            "|---|---|---|---:|---:|",
        ]
        for r in result["latency"]:
            runs = ", ".join(f"{t:.1f} [{low:.1f}–{high:.1f}]" for t, (low, high) in zip(r["p50_ms"], r["p50_interval_ms"]))
            lines.append(f"| {r['model']} | {r['input'][-1]} | {runs} | {r['mean_p50_ms']:.2f} | {r['cv']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", help="Models to count (default: every classification model).")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency-models", nargs="*", default=list(LATENCY_MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    configure_timing(args.threads)  # as optkit run does: threads, and denormals flushed

    names = args.models or torchvision.models.list_models(module=torchvision.models)
    rows = []
    for name in names:
        row = count_model(name)
        rows.append(row)
        if "gmacs" in row:
            log.info("%-20s %9.3f GMACs (%+.2f%%)  %12s params (%+.2f%%)  %s  %.1fs", name, row["gmacs"],
                     100 * row["gmacs_error"], f"{row['params']:,}", 100 * row["params_error"], row["status"], row["seconds"])
        else:
            log.info("%-20s %s", name, row["status"])
    latency, noise = [], None
    if not args.skip_latency:
        noise = check_noise(torch.device("cpu"), MeasureSpec().noise_max_cv)
        for name in args.latency_models:
            latency.append(latency_repeatability(name, args.repeats, args.warmup, args.iters))
            log.info("%-20s latency CV %.1f%% over %d repeats", name, 100 * latency[-1]["cv"], args.repeats)
    result = {
        "tolerance": TOLERANCE,
        "command": " ".join([".venv/bin/python", "benchmarks/flops_vs_torchvision.py", *(argv if argv is not None else sys.argv[1:])]),
        "environment": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        },
        "models": rows,
        "latency": latency,
        "noise": noise,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output / "flops_vs_torchvision.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.output / "flops_vs_torchvision.md", render_markdown(result))
    off = [r["model"] for r in rows if r["status"] == "OFF"]
    if off:
        log.warning("outside %.0f%%: %s", 100 * TOLERANCE, ", ".join(off))
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
