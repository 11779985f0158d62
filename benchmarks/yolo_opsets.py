"""Every opset export_onnx accepts, on an Ultralytics YOLO built from its yaml: which route made a
valid file, how many Split nodes were repaired, and parity per channel group (issue #18).

Needs Ultralytics (run it with the second environment `make test` creates); the model is built from
the yaml Ultralytics ships, with random weights, and exported with its deployment output
(``[B, 84, anchors]``) and a dynamic batch. Also exports the same model wrapped in ``tta``.

Writes ``yolo_opsets.md`` and ``.json`` to ``--output`` (default benchmarks/results).

    YOLO_OFFLINE=1 .venv-ultralytics/bin/python benchmarks/yolo_opsets.py               # yolo11n, 128x128
    YOLO_OFFLINE=1 .venv-ultralytics/bin/python benchmarks/yolo_opsets.py --opsets 17 18 --tta
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from optkit.errors import StageError
from optkit.files import atomic_write_text
from optkit.passes import PassContext
from optkit_plugins.export_onnx import ExportOnnx
from optkit_plugins.tta import TTA


def export_at(model: torch.nn.Module, x: torch.Tensor, opset: int, folder: Path) -> dict[str, Any]:
    ctx = PassContext(device=torch.device("cpu"), example_input=x, output_dir=folder, logger=logging.getLogger("yolo_opsets"))
    try:
        ExportOnnx(ExportOnnx.Options(opset=opset, verify_batch_sizes=[1, 2])).apply(model, ctx)
    except StageError as error:
        return {"opset": opset, "ok": False, "error": str(error), "attempts": ctx.details.get("export_attempts")}
    details = ctx.details
    return {
        "opset": opset,
        "ok": True,
        "route": details["exporter"],
        "splits_fixed": details["export_attempts"][-1].get("splits_fixed", 0),
        "attempts": details["export_attempts"],
        "export_s": details["export_s"],
        "parity": {row["output"]: {"max_abs": row["max_abs"], "excess": row["excess"]} for row in details["parity"]["per_output"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", default="yolo11n.yaml")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--opsets", type=int, nargs="+", default=[13, 14, 15, 16, 17, 18, 19, 20, 21])
    parser.add_argument("--tta", action="store_true", help="Also export the model wrapped in tta (scales 1, 0.83, 0.67, horizontal flip).")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    from ultralytics.nn.tasks import DetectionModel  # AGPL: benchmarks and tests only, never optkit itself

    torch.manual_seed(0)
    model = DetectionModel(args.cfg, verbose=False).eval()
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    subjects = {args.cfg: model}
    if args.tta:
        with tempfile.TemporaryDirectory() as folder:
            ctx = PassContext(device=torch.device("cpu"), example_input=x, output_dir=Path(folder), logger=logging.getLogger("yolo_opsets"))
            subjects[f"tta({args.cfg})"] = TTA(TTA.Options(pad_value=0.447)).apply(model, ctx)
    rows = []
    for name, subject in subjects.items():
        for opset in args.opsets:
            with tempfile.TemporaryDirectory() as folder:
                row = {"model": name, **export_at(subject, x, opset, Path(folder))}
            print(json.dumps(row))
            rows.append(row)
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output / "yolo_opsets.json", json.dumps({"size": args.size, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# export_onnx opsets on Ultralytics {args.cfg} ({args.size}x{args.size}, deployment output, dynamic batch)",
        "",
        "| model | opset | valid | route | Splits repaired | boxes excess | scores excess | other routes tried |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row["ok"]:
            lines.append(f"| {row['model']} | {row['opset']} | refused | – | – | – | – | {row['error'][:120]} |")
            continue
        parity = row["parity"]
        boxes = next((v["excess"] for k, v in parity.items() if k.endswith("(boxes)")), None)
        scores = next((v["excess"] for k, v in parity.items() if k.endswith("(scores)")), None)
        tried = "; ".join(f"{a['route']}: {a['reason'][:80]}" for a in row["attempts"] if not a["ok"]) or "–"
        lines.append(f"| {row['model']} | {row['opset']} | yes | {row['route']} | {row['splits_fixed']} | {boxes:.2g} | {scores:.2g} | {tried} |")
    lines += ["", "excess: max|Δ| over batches 1 and 2 ÷ (1e-5 + 1e-3 × max|that group|); above 1 fails the stage."]
    atomic_write_text(args.output / "yolo_opsets.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
