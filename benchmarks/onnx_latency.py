"""onnxruntime against eager PyTorch on the CPU, side by side (issue #5: at least 2x for resnet50).

The model (``weights=None``: latency does not depend on the weights) is exported by the
``export_onnx`` pass itself, so the file timed is the verified artifact a pipeline produces.
Eager PyTorch runs the eval model under ``torch.inference_mode()``; onnxruntime runs the file with
all graph optimizations (``ORT_ENABLE_ALL``) and as many intra-op threads as torch uses. The two
are timed side by side by optkit's own loop (``optkit.measure.latency.time_round_robin``: one call each
per round in a shuffled order), so noise on a shared machine hits both alike. The speed-up
is the median of the per-round ratios with its 95% order-statistic interval, as ``optkit run``
reports it; the target is met only when the whole interval lies above it.

With ``--fuse-bn`` both sides get the model after the ``fuse_bn`` pass (eager PyTorch then no longer
pays for separate BatchNorm kernels; onnxruntime folds BatchNorm itself either way).

Writes ``onnx_latency_<model>.md`` and ``.json`` to ``--output`` (default benchmarks/results).

    .venv/bin/python benchmarks/onnx_latency.py                       # resnet50, batch 1, 224x224
    .venv/bin/python benchmarks/onnx_latency.py --threads 2 --iters 100 --fuse-bn
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torchvision

from optkit.config.pipeline import MeasureSpec
from optkit.files import atomic_write_text
from optkit.measure.intervals import speedup
from optkit.measure.latency import Contender, configure_timing, time_round_robin
from optkit.measure.noise import check_noise
from optkit.passes import PassContext
from optkit.reporting.tables import format_speedup, noise_warning
from optkit.run.environment import environment
from optkit_plugins.export_onnx import ExportOnnx

log = logging.getLogger("onnx_latency")

TARGET = 2.0


def export(model: torch.nn.Module, example: torch.Tensor, folder: Path) -> tuple[Any, dict[str, Any]]:
    """The verified ONNX artifact of ``model``, made by the export_onnx pass, and its details."""
    ctx = PassContext(
        device=torch.device("cpu"),
        example_input=example,
        output_dir=folder,
        logger=log,
    )
    artifact = ExportOnnx(ExportOnnx.Options(dynamic_batch=True)).apply(model, ctx)
    return artifact, ctx.details


def fuse_batchnorm(model: torch.nn.Module, example: torch.Tensor, folder: Path) -> torch.nn.Module:
    """The model after the fuse_bn pass (looked up in the registry, as a pipeline would)."""
    from optkit.host.facade import Host

    pass_cls = Host().get_pass("fuse_bn")
    ctx = PassContext(device=torch.device("cpu"), example_input=example, output_dir=folder, logger=log)
    return pass_cls().apply(model, ctx)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="torchvision classification model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--fuse-bn", action="store_true", help="apply the fuse_bn pass first (both sides)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)  # this script's progress; not the exporters' own chatter

    configure_timing(args.threads)  # as optkit run does: threads, and denormals flushed
    threads = torch.get_num_threads()
    model = torchvision.models.get_model(args.model, weights=None).eval()
    example = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    with tempfile.TemporaryDirectory() as folder:
        if args.fuse_bn:
            model = fuse_batchnorm(model, example, Path(folder)).eval()
        artifact, details = export(model, example, Path(folder))
        artifact.threads = threads
        onnx_run = artifact.load(torch.device("cpu"))
        log.info("exported with %s (opset %s); parity max|Δ| %.2e", details["exporter"], details["opset"], details["parity"]["max_abs"])
        noise = check_noise(torch.device("cpu"), MeasureSpec().noise_max_cv)
        latency = time_round_robin({"torch": Contender(model), "onnxruntime": Contender(onnx_run)}, example,
                                   torch.device("cpu"), args.warmup, args.iters)

    figure = speedup(latency["torch"], latency["onnxruntime"], paired=True)
    result = {
        "benchmark": "onnx_latency",
        "model": args.model,
        "input_shape": list(example.shape),
        "fuse_bn": args.fuse_bn,
        "threads": threads,
        "graph_optimization": "ORT_ENABLE_ALL",
        "warmup": args.warmup,
        "iters": args.iters,
        "exporter": details["exporter"],
        "opset": details["opset"],
        "parity_max_abs": details["parity"]["max_abs"],
        "latency_ms": {"torch_eager": latency["torch"], "onnxruntime": latency["onnxruntime"]},
        "speedup": figure.model_dump(mode="json"),
        "target": TARGET,
        # the whole interval above the target, not the estimate alone; not judged on a busy machine,
        # where the two runtimes' threads suffer unequally from the load
        "meets_target": None if noise["noisy"] else figure.low >= TARGET,
        "environment": {**environment(torch.device("cpu")), "noise": noise},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    stem = f"onnx_latency_{args.model}" + ("_fuse_bn" if args.fuse_bn else "")
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.output / f"{stem}.md", render_markdown(result))
    print(render_markdown(result))
    return 0


def render_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    rows = [
        f"| {label} | {s['p10']:.2f} | {s['p50']:.2f} [{s['p50_interval']['low']:.2f}–{s['p50_interval']['high']:.2f}] | "
        f"{s['p90']:.2f} | {s['mean']:.2f} | {min(s['samples']):.2f} | {s['n']} |"
        for label, s in (("eager PyTorch", result["latency_ms"]["torch_eager"]), ("onnxruntime", result["latency_ms"]["onnxruntime"]))
    ]
    figure, target = result["speedup"], result["target"]
    if result["meets_target"] is None:
        verdict = (f"the {target:.0f}× target is not judged: the machine was busy, and under load the two runtimes' "
                   "threads suffer unequally, so the ratio measures the load as much as the runtimes")
    elif result["meets_target"]:
        verdict = f"its whole interval lies above the {target:.0f}× target"
    elif figure["high"] < target:
        verdict = f"its whole interval lies below the {target:.0f}× target"
    else:
        verdict = f"its interval includes the {target:.0f}× target: not shown to meet it"
    warning = noise_warning(env.get("noise"))
    return "\n".join([
        f"# onnxruntime vs eager PyTorch: {result['model']}" + (" (after fuse_bn)" if result["fuse_bn"] else ""),
        "",
        f"Input {result['input_shape']}, CPU ({env['processor']}), {result['threads']} intra-op thread(s) on both sides, "
        f"onnxruntime {env['onnxruntime']} with {result['graph_optimization']}, torch {env['torch']} eager under inference_mode. "
        f"Exported by export_onnx ({result['exporter']}, opset {result['opset']}; parity max|Δ| {result['parity_max_abs']:.2e}). "
        f"Timed side by side, {result['iters']} rounds after {result['warmup']} warm-up rounds; p50 with its 95% interval.",
        "",
        *([f"**{warning}** Re-run on a quiet machine before quoting these figures.", ""] if warning else []),
        "| runtime | p10 ms | p50 ms [95% interval] | p90 ms | mean ms | min ms | n |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"**Speed-up: {format_speedup(figure)}** (median of the per-round ratios, 95% interval): {verdict}.",
        "",
        f"Command: `{result['command']}`",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
