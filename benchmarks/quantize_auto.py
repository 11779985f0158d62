"""quantize_onnx ``mode: auto`` across architectures (issue #27): does it keep the tolerance, and is int8 not slower?

Per model (random weights: ``timm`` with ``pretrained=False``, torchvision with ``weights=None,
weights_backbone=None``), one ``optkit run`` pipeline: ``export_onnx``, then ``quantize_onnx:
{mode: auto}`` calibrated on a ``python:`` dataset of synthetic images (this module's
:func:`synthetic_images`: smooth random fields and blobs, normalized like ImageNet inputs) and,
for classifiers, compared on 128 other samples of it as ``data.eval``; DeepLabV3's outputs are
not logits, so it is compared on the similarity gate's 32 seeded samples, held to the default cosine
(0.99) only (``min_top1_agreement: null``: the runner refuses a top-1 minimum on outputs that are not logits). Then the fp32 and the
chosen int8 ONNX files are timed side by side by optkit's loop (``time_round_robin``: one call each
per round, seeded shuffled order) after the noise check; the int8/fp32 latency ratio is the
median of the per-round ratios with its 95% interval, widened by the 5% run-to-run margin.

Random weights make the accuracy check weak: the tolerance is held against the float model's
own outputs (cosine, top-1 agreement), which random weights make less peaked than trained ones,
so the figures say that int8 follows float on these inputs, not what a trained model would lose.

Writes ``quantize_auto.md`` and ``.json`` to ``--output`` (default benchmarks/results); with
``--models`` only those are run and merged into an existing JSON.

    .venv/bin/python benchmarks/quantize_auto.py --threads 2 --rounds 30
    .venv/bin/python benchmarks/quantize_auto.py --models deit_tiny_patch16_224 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from optkit import OnnxArtifact
from optkit.config.pipeline import MeasureSpec, load_pipeline
from optkit.files import atomic_write_text
from optkit.host.facade import Host
from optkit.measure.cpu import CpuInfo
from optkit.measure.intervals import speedup
from optkit.measure.latency import Contender, configure_timing, time_round_robin
from optkit.measure.noise import check_noise
from optkit.reporting.tables import noise_warning
from optkit.run.environment import environment
from optkit.run.runner import run_pipeline

log = logging.getLogger("quantize_auto_bench")

#: name → (library, input size, note on the size).
MODELS: dict[str, tuple[str, int, str]] = {
    "deit_tiny_patch16_224": ("timm", 224, "native"),
    "swin_tiny_patch4_window7_224": ("timm", 224, "native"),
    "mobilevit_xxs": ("timm", 256, "native"),
    "mobilenetv3_large_100": ("timm", 224, "native"),
    "deeplabv3_mobilenet_v3_large": ("torchvision", 224, "smaller than its 520 training size"),
}


def build(name: str) -> torch.nn.Module:
    """A model of :data:`MODELS` with random weights (``python:quantize_auto:build``)."""
    torch.manual_seed(0)
    if MODELS[name][0] == "timm":
        import timm

        # A size other than the native one is built for (timm's img_size); "native" rows take the default.
        sized = {} if MODELS[name][2].startswith("native") else {"img_size": MODELS[name][1]}
        return timm.create_model(name, pretrained=False, **sized)
    import torchvision

    return torchvision.models.get_model(name, weights=None, weights_backbone=None)


class SyntheticImages(torch.utils.data.Dataset):
    """Smooth random images, ImageNet-normalized: a few low-frequency waves and Gaussian blobs per
    channel, scaled to [0, 1] and normalized with ImageNet's mean and std; label -1 (none)."""

    def __init__(self, count: int, size: int, seed: int):
        self.count, self.size, self.seed = count, size, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
        axis = torch.linspace(0, 1, self.size)
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        image = torch.zeros(3, self.size, self.size)
        for channel in range(3):
            for _ in range(4):
                fy, fx, phase = (torch.rand(3, generator=generator) * torch.tensor([6.0, 6.0, 2 * math.pi])).tolist()
                image[channel] += torch.sin(2 * math.pi * (fy * y + fx * x) + phase)
            for _ in range(3):
                cy, cx, width = torch.rand(3, generator=generator).tolist()
                image[channel] += 2 * torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (0.02 + 0.1 * width))
        low, high = image.amin((1, 2), keepdim=True), image.amax((1, 2), keepdim=True)
        image = (image - low) / (high - low + 1e-6)
        mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        return (image - mean) / std, -1


def synthetic_images(count: int = 64, size: int = 224, seed: int = 0) -> SyntheticImages:
    """:class:`SyntheticImages` (``python:quantize_auto:synthetic_images``)."""
    return SyntheticImages(count, size, seed)


def pipeline_document(name: str, threads: int) -> dict[str, Any]:
    """export_onnx, then quantize_onnx mode auto, calibrated on synthetic images (and compared on others for classifiers)."""
    library, size, _ = MODELS[name]
    calibration = {"source": "python:quantize_auto:synthetic_images", "kwargs": {"count": 32, "size": size, "seed": 1}, "batch_size": 4}
    data: dict[str, Any] = {"calibration": calibration}
    if library == "timm":  # classifiers: compared on 128 samples of data.eval
        data["eval"] = {"source": "python:quantize_auto:synthetic_images", "kwargs": {"count": 128, "size": size, "seed": 2}, "batch_size": 16}
    quantize: dict[str, Any] = {"mode": "auto", "calibration": {"batches": 8}}
    if library != "timm":  # segmentation maps are not logits: the runner holds no top-1 agreement on them, cosine only
        quantize["min_top1_agreement"] = None
    return {
        "model": {"source": "python:quantize_auto:build", "kwargs": {"name": name}, "input_shape": [1, 3, size, size]},
        "device": "cpu",
        "measure": {"latency": False, "threads": threads, "flops": False},
        "data": data,
        "passes": ["export_onnx", {"quantize_onnx": quantize}],
    }


def run_model(name: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One model: the pipeline, then fp32 and int8 ONNX side by side."""
    host = Host()
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(pipeline_document(name, args.threads), sort_keys=False))
    start = time.perf_counter()
    report, _ = run_pipeline(load_pipeline(path, host.get_pass), host, output=folder / name)
    row: dict[str, Any] = {"input_size": MODELS[name][1], "size_note": MODELS[name][2], "seconds": round(time.perf_counter() - start, 1)}
    if report.status != "ok" and len(report.stages) < 3:
        return {**row, "error": report.error}
    exported, quantized = report.stages[1], report.stages[2]
    auto = quantized.details.get("auto", {})
    metrics = {"fp32": exported.metrics.model_dump(), "int8": quantized.metrics.model_dump()}  # typed report: plain dicts here
    agreement = (metrics["int8"].get("agreement") or {}).get("previous") or {}
    gate = quantized.details.get("similarity_gate") or {}
    row.update(
        {
            "status": quantized.status,
            "error": report.error,
            "family": auto.get("family"),
            "chosen": auto.get("chosen"),
            "kept_in_float": auto.get("kept_in_float"),
            "float_op_types": auto.get("float_op_types"),
            "candidates": auto.get("candidates"),
            "note": auto.get("note"),
            "compared_on": auto.get("compared_on"),
            "gate": {
                "on": "data.eval" if agreement else gate.get("on"),
                "cosine": agreement.get("cosine", gate.get("cosine")),
                "top1_agreement": agreement.get("top1", gate.get("top1")),
                "samples": agreement.get("n", gate.get("samples")),
            },
            "calibration": quantized.details.get("calibration"),
            "reduce_range": quantized.details.get("reduce_range"),
            "fp32_bytes": metrics["fp32"].get("size_bytes"),
            "int8_bytes": metrics["int8"].get("size_bytes"),
        }
    )
    fp32_file = folder / name / "stages" / "01-export_onnx" / "model.onnx"
    int8_file = folder / name / "stages" / "02-quantize_onnx" / "model_int8.onnx"
    if quantized.status == "ok" and int8_file.is_file():
        row["latency"] = time_side_by_side(fp32_file, int8_file, MODELS[name][1], args)
    elif (auto.get("chosen") or {}).get("mode") == "float":  # auto found int8 slower and kept float: its own timing says by how much
        row["rejected"] = auto["chosen"]["rejected"]
    return row


def time_side_by_side(fp32_file: Path, int8_file: Path, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """fp32 and int8 ONNX in one round-robin loop, after the noise check; the int8/fp32 ratio with its interval."""
    device = torch.device("cpu")
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    contenders = {
        "fp32": Contender(OnnxArtifact(path=fp32_file).load(device)),
        "int8": Contender(OnnxArtifact(path=int8_file).load(device)),
    }
    noise = check_noise(device, MeasureSpec().noise_max_cv)
    latency = time_round_robin(contenders, example, device, args.warmup, args.rounds)
    typed = speedup(latency["fp32"], latency["int8"], paired=True)
    assert typed is not None
    figure = typed.model_dump()
    return {
        "noise": noise,
        "fp32_ms": {k: latency["fp32"][k] for k in ("p50", "p50_interval", "p10", "p90", "n")},
        "int8_ms": {k: latency["int8"][k] for k in ("p50", "p50_interval", "p10", "p90", "n")},
        "speedup": figure,
        # int8 latency over fp32's: the inverse of the speed-up, its interval inverted.
        "ratio": {"value": 1 / figure["value"], "low": 1 / figure["high"], "high": 1 / figure["low"]},
        "not_slower": figure["high"] >= 1.0,
        "faster": figure["low"] > 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    sys.path.insert(0, str(Path(__file__).parent))  # python:quantize_auto:... resolves to this module

    configure_timing(args.threads)
    json_path = args.output / "quantize_auto.json"
    result: dict[str, Any] = json.loads(json_path.read_text()) if json_path.is_file() and set(args.models) != set(MODELS) else {}
    result.update({"benchmark": "quantize_auto", "environment": environment(torch.device("cpu"))})
    result.setdefault("models", {})
    result.setdefault("commands", {})
    command = " ".join([Path(sys.executable).name, *sys.argv])
    for name in args.models:
        with tempfile.TemporaryDirectory() as folder:
            log.info("%s ...", name)
            result["models"][name] = run_model(name, Path(folder), args)
            result["commands"][name] = command
            log.info("%s: %s", name, json.dumps({k: result["models"][name].get(k) for k in ("status", "chosen", "gate", "seconds")}))
        args.output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
        atomic_write_text(args.output / "quantize_auto.md", render_markdown(result))
    print(render_markdown(result))
    return 0


def _ratio(figure: dict[str, Any]) -> str:
    ratio = figure["ratio"]
    return f"{ratio['value']:.2f} [{ratio['low']:.2f}–{ratio['high']:.2f}]"


def _search_ratio(speed: dict[str, Any]) -> str:
    """int8/fp32 latency from the search's speed-up record (float's time over int8's), its interval inverted."""
    return f"{1 / speed['speedup']:.2f} [{1 / speed['high']:.2f}–{1 / speed['low']:.2f}]"


def render_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    cpu = CpuInfo.from_dict(env["cpu"]).describe()
    lines = [
        "# quantize_onnx mode auto across architectures",
        "",
        f"CPU: {cpu}; onnxruntime {env.get('onnxruntime')}, torch {env.get('torch')}. Random weights (timm `pretrained=False`, "
        "torchvision `weights=None, weights_backbone=None`); calibrated on 32 synthetic images (`python:quantize_auto:synthetic_images`, "
        "8 batches of 4); classifiers compared on 128 other synthetic images as data.eval, DeepLabV3 on the similarity gate's 32 "
        "seeded samples. Tolerance: the default (cosine >= 0.99, top-1 agreement >= 0.95) against the fp32 ONNX model; "
        "DeepLabV3 cosine only (its outputs are not logits, so top-1 agreement does not apply).",
        "",
        "**Random weights make the accuracy check weak**: int8 is held to the float model's own outputs, and a random model's "
        "logits are flatter than a trained one's; these figures say that int8 follows float on these inputs, not what a "
        "trained model would lose.",
        "",
        "Latency: fp32 and int8 ONNX timed side by side (one call each per round, seeded shuffled order, batch 1); "
        "int8/fp32 is the median of the per-round ratios with its 95% interval, widened by the 5% run-to-run margin "
        "(below 1: int8 is faster). Where the search found its most accurate-and-fastest int8 slower than float "
        "(the speed-up's whole interval below 1), mode auto keeps the float graph: the row then gives the search's own "
        "side-by-side figure for the int8 it rejected.",
        "",
        "| model | input | family | chosen scheme | kept in float | cosine | top-1 agr. | on | int8/fp32 latency | fp32 ms | int8 ms | noise check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["models"].items():
        if not row.get("chosen"):
            lines.append(f"| {name} | {row['input_size']} | failed: {row.get('error')} |||||||||| |")
            continue
        chosen = row["chosen"] or {}
        kept = row.get("kept_in_float") or []
        kept_text = "the whole graph" if row.get("rejected") else f"{len(kept)} nodes" if kept else "none"
        if row.get("float_op_types"):
            kept_text += f"; op types {', '.join(row['float_op_types'])}"
        gate = row["gate"]
        if row.get("rejected"):  # float kept: the figures of the int8 it rejected, on the samples the search used
            rejected = row["rejected"]
            samples = (row.get("compared_on") or "").split(" ")[0]
            gate = {"cosine": rejected["cosine"], "top1_agreement": rejected["top1_agreement"], "samples": f"{samples} (int8 rejected)"}
        top1 = "–" if gate.get("top1_agreement") is None else f"{gate['top1_agreement']:.3f}"
        latency = row.get("latency")
        if latency:
            noise = "busy" if latency["noise"].get("noisy") else "quiet"
            timing = f"{_ratio(latency)} | {latency['fp32_ms']['p50']:.1f} | {latency['int8_ms']['p50']:.1f} | {noise}"
        elif row.get("rejected"):
            speed = row["rejected"]["latency_vs_float"]
            timing = f"float kept: int8 was {_search_ratio(speed)} | {speed['float_ms']:.1f} | {speed['int8_ms']:.1f} | the search's"
        else:
            timing = "– | – | – | –"
        status = "" if row.get("status") == "ok" else f" ({row.get('status')})"
        lines.append(
            f"| {name}{status} | {row['input_size']} | {row.get('family')} | {chosen.get('scheme')} | {kept_text} | "
            f"{'–' if gate.get('cosine') is None else format(gate['cosine'], '.5f')} | {top1} | {gate.get('samples')} | {timing} |"
        )
    lines += ["", "## Candidates tried", ""]
    for name, row in result["models"].items():
        if not row.get("candidates"):
            continue
        lines += [f"**{name}** ({row.get('seconds')} s for export and search):", ""]
        for trial in row["candidates"]:
            speed = trial.get("latency_vs_float")
            timing = f", int8/fp32 {_search_ratio(speed)} in the search's own timing" if speed else ""
            top1 = "" if trial.get("top1_agreement") is None else f", top-1 {trial['top1_agreement']:.3f}"
            if trial.get("error"):
                lines.append(f"- {trial['scheme']}: could not be quantized: {trial['error']}")
                continue
            lines.append(f"- {trial['scheme']}: cosine {trial['cosine']:.5f}{top1}, {'holds' if trial['holds_tolerance'] else 'fails'}{timing}")
        if row.get("note"):
            lines.append(f"- note: {row['note']}")
        if row.get("kept_in_float"):
            worst = [k for k in row["kept_in_float"] if "lost_db" in k][:5]
            if worst:
                listed = ", ".join(f"{k['node']} ({k['op_type']}, {k['lost_db']} dB lost)" for k in worst)
                lines.append(f"- worst kept in float: {listed}")
        latency = row.get("latency")
        if latency and (warning := noise_warning(latency["noise"])):
            lines.append(f"- {warning}")
        lines.append("")
    lines += ["Commands:", ""]
    for name, command in result.get("commands", {}).items():
        lines.append(f"- {name}: `{command}`")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
