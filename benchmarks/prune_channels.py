"""Benchmark: prune_l1 ``mode: channels`` against the unpruned model and Torch-Pruning, side by side.

For each model and amount, from the same randomly initialised model (``benchmarks/model_sources.py``):

- ``optkit``: the ``prune_l1`` pass (``mode: channels``), with the installed module rules, as a
  pipeline stage runs it;
- ``torch_pruning``: Torch-Pruning's ``MagnitudePruner`` with L1 importance, per layer, the
  classifier or detection head ignored, on the model as it is; where that fails and Torch-Pruning
  documents a way to help it, ``torch_pruning_helped`` too: ``num_heads`` (and whole heads) for
  timm's ViT attention, and its YOLOv8 recipe (every C2f rewritten without ``chunk``) for YOLO.

"amount" means the same in both: the share of channels removed from every group (optkit keeps
``floor(n * (1 - amount))``, as Torch-Pruning does). MACs are optkit's count (thop rules, the aten
counter and module rules), the same for every variant. Every optkit result is checked: same
output shapes, a train-mode forward and backward, a save and reload, and an ONNX export
(optkit's ``export_onnx``) whose outputs match PyTorch at batch 1, 2 and 8. CPU latency at batch 1
is measured side by side by optkit's own loop (``optkit.measure.latency.time_round_robin``: one call each
per round, in a shuffled order) unless ``--no-latency``; each latency ratio is the median of the
per-round ratios with its 95% interval (widened by the 5% run-to-run margin), a tie when it includes 1, after a noise check. MACs are
deterministic.

Usage (from the repository root; the ultralytics: rows need the interpreter of .venv-ultralytics
with the ``bench`` extra: ``.venv-ultralytics/bin/pip install -e ".[bench]" -c constraints.txt``)::

    .venv/bin/python benchmarks/prune_channels.py --no-latency                      # MACs, checks
    .venv-ultralytics/bin/python benchmarks/prune_channels.py --rounds 30           # + YOLO, + latency
    .venv/bin/python benchmarks/prune_channels.py --models timm:efficientnet_b0 --amounts 0.3,0.5

Writes ``benchmarks/results/prune_channels.md`` and ``.json`` (``--output`` changes the stem).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_sources  # noqa: E402

from optkit import PassContext  # noqa: E402
from optkit.config.pipeline import MeasureSpec
from optkit.files import atomic_write_text  # noqa: E402
from optkit.measure.intervals import speedup
from optkit.measure.latency import Contender, configure_timing, time_round_robin
from optkit.measure.noise import check_noise
from optkit.measure.params import count_params
from optkit.models.classifier_head import find_classifier
from optkit.models.rules import class_path
from optkit.reporting.tables import format_count, format_speedup, noise_warning
from optkit.run.environment import environment  # noqa: E402
from optkit_plugins.export_onnx import ExportOnnx  # noqa: E402
from optkit_plugins.prune_l1 import PruneL1  # noqa: E402

log = logging.getLogger("benchmarks.prune_channels")

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = [
    "torchvision:resnet50", "timm:efficientnet_b0", "timm:regnety_008", "timm:regnetx_004", "timm:resnet50d",
    "torchvision:convnext_tiny", "timm:vit_tiny_patch16_224", "torchvision:googlenet",
    "ultralytics:yolov8s.yaml", "ultralytics:yolo11n.yaml",
]
#: Torch-Pruning runs longer than this on some graphs (YOLO11's, in DependencyGraph): stopped, reported.
TP_TIMEOUT_S = 300


def leaves(output: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]


def shapes(model: nn.Module, x: torch.Tensor) -> list[list[int]]:
    with torch.no_grad():
        return [list(t.shape) for t in leaves(copy.deepcopy(model).eval()(x))]


# -- the variants ----------------------------------------------------------------------------------
#: YOLO's eval output echoes Detect's inputs (``feats``); Torch-Pruning lets them shrink, and so
#: does the ``optkit_free_outputs`` variant, for a comparison in the same setting.
YOLO_FEATS = ["['feats']"]


def prune_optkit(model: nn.Module, x: torch.Tensor, amount: float, free_outputs: list[str] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """optkit's prune_l1 in channels mode, as a pipeline stage runs it."""
    ctx = PassContext(torch.device("cpu"), x, RESULTS, logging.getLogger("optkit.stage.prune_l1"), module_rules=model_sources.rules())
    options = PruneL1.Options(mode="channels", amount=amount, free_outputs=free_outputs or [])
    pruned = PruneL1(options).apply(model, ctx)
    notes = {"backoffs": len(ctx.details["backoffs"]), "left_alone_reasons": sorted({f["reason"] for f in ctx.details["left_alone"]})[:8]}
    return pruned, notes


def _head(source: str, model: nn.Module) -> list[nn.Module]:
    """What Torch-Pruning is told to ignore: the classifier(s), or the detection head."""
    if source.startswith("ultralytics:"):
        return [model.model[-1]]
    if source.endswith("googlenet"):
        return [model.fc, model.aux1.fc2, model.aux2.fc2]
    return [model.get_submodule(find_classifier(model)[0])]


def _timm_attention(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if class_path(m) == "timm.layers.attention.Attention"]


def _rewrite_c2f(model: nn.Module) -> int:
    """Torch-Pruning's YOLOv8 recipe: each C2f (and C3k2) gets cv0 + cv1 instead of cv1().chunk(2)."""
    from ultralytics.nn.modules.block import C2f
    from ultralytics.nn.modules.conv import Conv

    class C2fWithoutChunk(nn.Module):
        def forward(self, x):
            y = [self.cv0(x), self.cv1(x)]
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, C2f):
                continue
            new, c, old = C2fWithoutChunk(), child.c, child.cv1
            new.cv0, new.cv1 = Conv(old.conv.in_channels, c, 1, 1), Conv(old.conv.in_channels, c, 1, 1)
            for dst, part in ((new.cv0, slice(0, c)), (new.cv1, slice(c, 2 * c))):
                dst.conv.weight.data = old.conv.weight.data[part].clone()
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(dst.bn, attr).data = getattr(old.bn, attr).data[part].clone()
                dst.act = old.act
            new.cv2, new.m, new.c = child.cv2, child.m, c
            for attr in ("f", "i", "type", "np"):
                if hasattr(child, attr):
                    setattr(new, attr, getattr(child, attr))
            setattr(parent, name, new)
            count += 1
    return count


def prune_torch_pruning(source: str, model: nn.Module, x: torch.Tensor, amount: float, helped: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Torch-Pruning's L1 MagnitudePruner, per layer, the head ignored (see the module docstring)."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(True)
    ignored, kwargs, notes, attention = _head(source, model), {}, {}, []
    if helped and source.startswith("timm:vit"):
        attention = _timm_attention(model)
        kwargs = {"num_heads": {m.qkv: m.num_heads for m in attention}, "prune_num_heads": True,
                  "prune_head_dims": False, "head_pruning_ratio": amount}
        notes["help"] = "num_heads of every attention, whole heads (head_pruning_ratio = amount)"
    if helped and source.startswith("ultralytics:"):
        notes["help"] = f"{_rewrite_c2f(model)} C2f/C3k2 rewritten without chunk (Torch-Pruning's YOLOv8 recipe)"
        if "yolo11" in source:
            ignored += [m for m in model.modules() if type(m).__name__ in ("C2PSA", "PSABlock", "Attention")]
            notes["help"] += "; C2PSA attention ignored"
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=amount, ignored_layers=ignored, **kwargs
    )
    pruner.step()
    for m in attention:
        m.num_heads = pruner.num_heads[m.qkv]
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)
        m.attn_dim = m.num_heads * m.head_dim
    return model.eval(), notes


def _with_timeout(seconds: int, build: Callable[[], Any]) -> Any:
    def stop(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        return build()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- checks ----------------------------------------------------------------------------------------
def train_mode_ok(model: nn.Module, x: torch.Tensor) -> str:
    trained = copy.deepcopy(model).train()
    try:
        sum(t.float().mean() for t in leaves(trained(torch.cat([x, x])))).backward()
        return "ok"
    # The model's own code in train mode (a layer whose inputs no longer fit raises here).
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"


def reload_ok(model: nn.Module, x: torch.Tensor) -> str:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    # A whole pickled module this function just wrote to memory: unpickling it is safe, and
    # weights_only=True cannot rebuild a module's classes.
    loaded = torch.load(buffer, weights_only=False).eval()
    with torch.no_grad():
        same = all(torch.equal(a, b) for a, b in zip(leaves(model.eval()(x)), leaves(loaded(x)), strict=True))
    return "ok" if same else "outputs differ after reload"


def onnx_parity(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """optkit's export_onnx (dynamo, dynamic batch) verified at batch 1, 2 and 8."""
    with tempfile.TemporaryDirectory() as folder:
        ctx = PassContext(torch.device("cpu"), x, Path(folder), logging.getLogger("optkit.stage.export_onnx"))
        try:
            ExportOnnx(ExportOnnx.Options(exporter="dynamo", verify_batch_sizes=[1, 2, 8])).apply(model, ctx)
        # The exporter and onnxruntime fail in many ways; the row records how.
        except Exception as exc:  # noqa: BLE001
            return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    figures = ctx.details["parity"]["inputs"]
    return {"ok": True, "batches": sorted(f["batch"] for f in figures.values()),
            "max_rel": max(f["max_rel"] for f in figures.values())}


# -- one model -------------------------------------------------------------------------------------
def bench_model(source: str, amount: float, args: argparse.Namespace) -> dict[str, Any]:
    """Build the variants of one model at one amount, measure and check them."""
    x = model_sources.example_input(source, args.size)
    base = model_sources.build(source)
    with torch.no_grad():
        base(x)  # a first call, as any user makes (YOLO's Detect caches its anchors)
    reference = shapes(base, x)
    row: dict[str, Any] = {"model": source, "amount": amount, "input": list(x.shape), "variants": {}}
    models = {"unpruned": base}
    attempts: list[tuple[str, Callable[[], tuple[nn.Module, dict[str, Any]]]]] = [("optkit", lambda: prune_optkit(base, x, amount))]
    if source.startswith("ultralytics:"):
        attempts.append(("optkit_free_outputs", lambda: prune_optkit(base, x, amount, YOLO_FEATS)))
    if not args.no_torch_pruning:
        attempts.append(("torch_pruning", lambda: prune_torch_pruning(source, base, x, amount, helped=False)))
    while attempts:
        label, build = attempts.pop(0)
        start = time.perf_counter()
        try:
            model, notes = build() if label == "optkit" else _with_timeout(TP_TIMEOUT_S, build)
            pruned_shapes = shapes(model, x)  # a pruned model that no longer runs is a failure too
        # A pruner that fails on a model is a result (Torch-Pruning's IndexError on YOLO's C2f, or
        # a ViT it leaves with a reshape into heads that no longer fits).
        except Exception as exc:  # noqa: BLE001
            row["variants"][label] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            log.info("%s %s failed: %s", source, label, row["variants"][label]["error"])
            if label == "torch_pruning" and (source.startswith("timm:vit") or source.startswith("ultralytics:")):
                attempts.append(("torch_pruning_helped", lambda: prune_torch_pruning(source, base, x, amount, helped=True)))
            continue
        models[label] = model
        entry = {"ok": True, "prune_s": round(time.perf_counter() - start, 1), **notes}
        entry["same_output_shapes"] = pruned_shapes == reference
        entry["train_mode"] = train_mode_ok(model, x)
        if label.startswith("optkit"):
            entry["reload"] = reload_ok(model, x)
            if not args.no_onnx:
                entry["onnx"] = onnx_parity(model, x)
        row["variants"][label] = entry
    for label, model in models.items():
        row["variants"].setdefault(label, {"ok": True})
        row["variants"][label].update(params=count_params(model)["params"], macs=model_sources.macs(model, x))
    if not args.no_latency:
        contenders = {label: Contender(model) for label, model in models.items()}
        for label, latency in time_round_robin(contenders, x, torch.device("cpu"), args.warmup, args.rounds).items():
            row["variants"][label]["latency_ms"] = latency
    ref = row["variants"]["unpruned"]
    for v in row["variants"].values():
        if v.get("ok") and "macs" in v:
            v["macs_ratio"] = ref["macs"] / v["macs"]
            v["params_ratio"] = ref["params"] / v["params"]
            if "latency_ms" in v and v is not ref:  # the median of per-round ratios, with its interval
                v["latency_ratio"] = speedup(ref["latency_ms"], v["latency_ms"], paired=True)
    return row


# -- report ----------------------------------------------------------------------------------------
def _tp_cell(row: dict[str, Any]) -> tuple[str, float | None]:
    """Torch-Pruning's column: its ratio (raw, or helped and said so), or how it failed; and the ratio."""
    raw, helped = row["variants"].get("torch_pruning"), row["variants"].get("torch_pruning_helped")
    if raw is None:
        return "not run", None
    if raw.get("ok"):
        train = "" if raw["train_mode"] == "ok" else f"; train mode then fails: {raw['train_mode'][:80]}"
        return f"{raw['macs_ratio']:.3f}x{train}", raw["macs_ratio"]
    failure = f"fails: {raw['error'][:60]}"
    if helped and helped.get("ok"):
        shape_note = "" if helped["same_output_shapes"] else ", output shapes change"
        return f"{failure}; with help ({helped.get('help', '')}): {helped['macs_ratio']:.3f}x{shape_note}", helped["macs_ratio"]
    return failure, None


def render_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    env = meta["environment"]
    lines = [
        "# Channel pruning: optkit prune_l1 vs Torch-Pruning",
        "",
        f"torch {env.get('torch')}, torchvision {env.get('torchvision')}, {env.get('device')}, {meta['threads']} threads, batch 1. "
        f"Command: `{meta['command']}`",
        "",
        "*amount* = share of channels removed from every group (both tools keep floor(n * (1 - amount)); the classifier or "
        "detection head keeps its outputs). MACs: optkit's count (GFLOPs = 2 x GMACs); ratios are unpruned / pruned. "
        "Checks of the optkit model: output shapes, a train-mode forward+backward, save+reload, ONNX (dynamo) parity at "
        "batch 1/2/8 (largest difference / largest output). Latency ratio: unpruned / pruned, the median of the per-round "
        "ratios with its 95% interval (optkit's side-by-side loop, as `optkit run` reports speed-ups); **tie**: the interval, widened by the 5% run-to-run margin, includes 1.",
        "",
        *([f"**{warning}** Re-run on a quiet machine before quoting these figures.", ""] if (warning := noise_warning(env.get("noise"))) else []),
        "| model | input | amount | MACs | optkit MACs ratio | Torch-Pruning MACs ratio | optkit / TP | output shapes | train mode | reload | ONNX 1/2/8 | optkit s | latency ratio optkit / TP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['model']} | | | | not run: {row['skipped']} | | | | | | | | |")
            continue
        v = row["variants"]
        ours = v["optkit"]
        if not ours.get("ok"):
            lines.append(f"| {row['model']} | | {row['amount']} | | fails: {ours['error']} | | | | | | | | |")
            continue
        tp_text, tp_ratio = _tp_cell(row)
        versus = f"{ours['macs_ratio'] / tp_ratio:.3f}" if tp_ratio else "n/a"
        free = v.get("optkit_free_outputs")
        if free and free.get("ok") and tp_ratio:  # Torch-Pruning's setting: the echoed features may shrink
            versus += f"; with free_outputs {YOLO_FEATS[0]}: {free['macs_ratio']:.3f}x = {free['macs_ratio'] / tp_ratio:.3f}"
        onnx = ours.get("onnx")
        onnx_text = "not run" if onnx is None else (f"ok ({onnx['max_rel']:.1e})" if onnx["ok"] else f"fails: {onnx['error'][:60]}")
        tp_best = v.get("torch_pruning") if v.get("torch_pruning", {}).get("ok") else v.get("torch_pruning_helped", {})
        latency = "n/a"
        if "latency_ratio" in ours:
            latency = f"{format_speedup(ours['latency_ratio'])} / {format_speedup(tp_best.get('latency_ratio'))}"
        lines.append(
            f"| {row['model']} | {row['input'][-1]}x{row['input'][-1]} | {row['amount']} | {format_count(v['unpruned']['macs'])} | "
            f"{ours['macs_ratio']:.3f}x | {tp_text} | {versus} | {'same' if ours['same_output_shapes'] else 'CHANGED'} | "
            f"{ours['train_mode']} | {ours.get('reload', 'n/a')} | {onnx_text} | {ours['prune_s']} | {latency} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision:, timm: or ultralytics: names")
    parser.add_argument("--amounts", default="0.5", help="comma-separated amounts")
    parser.add_argument("--size", type=int, default=64, help="input height and width (fixed-size models keep theirs)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-latency", action="store_true", help="MACs and checks only")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and parity check")
    parser.add_argument("--no-torch-pruning", action="store_true", help="skip the Torch-Pruning columns")
    parser.add_argument("--output", type=Path, default=RESULTS / "prune_channels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    configure_timing(args.threads)  # as optkit run does: threads, and denormals flushed
    noise = None if args.no_latency else check_noise(torch.device("cpu"), MeasureSpec().noise_max_cv)
    rows = []
    for source in args.models.split(","):
        missing = model_sources.needs_missing_library(source)
        if missing:
            rows.append({"model": source, "skipped": missing})
            continue
        for amount in (float(a) for a in args.amounts.split(",")):
            print(f"{source} amount={amount} ...", file=sys.stderr, flush=True)
            rows.append(bench_model(source, amount, args))
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
