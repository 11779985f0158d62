"""Do two runs of one pipeline agree? The speed-up intervals of repeated runs, side by side.

Runs a pipeline file ``--runs`` times (each a full ``optkit run``: baseline, stages, timing) and
tabulates every stage's speed-up over the baseline with its interval, run by run, and whether
the intervals of all runs overlap. Intervals that never overlap across runs would mean the
intervals understate the noise; ones that do are what lets a reader trust a single run.

Writes ``speedup_repeatability.md`` and ``.json`` to ``--output`` (default benchmarks/results).

    .venv/bin/python benchmarks/speedup_repeatability.py                          # the small pipeline below, twice
    .venv/bin/python benchmarks/speedup_repeatability.py examples/resnet18.yaml --runs 3
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from optkit.config.pipeline import load_pipeline
from optkit.files import atomic_write_text
from optkit.host.facade import Host
from optkit.reporting.tables import format_speedup, noise_warning
from optkit.run.runner import run_pipeline

__all__ = ["SMALL_PIPELINE", "repeat", "overlap", "main"]

log = logging.getLogger("speedup_repeatability")

#: A pipeline quick enough to repeat: ResNet-18 at 64×64, fused, exported.
SMALL_PIPELINE = """\
model:
  source: torchvision:resnet18
  weights: none
  input_shape: [1, 3, 64, 64]
device: cpu
measure: {warmup: 5, iters: 40, threads: 1}
passes: [fuse_bn, export_onnx]
save_model: false
"""


def repeat(pipeline_file: Path, runs: int, folder: Path) -> list[dict[str, Any]]:
    """Run ``pipeline_file`` ``runs`` times into ``folder``; every run's report.json as a dict."""
    host = Host()
    reports = []
    for index in range(runs):
        pipeline = load_pipeline(pipeline_file, host.get_pass)
        report, run_dir = run_pipeline(pipeline, host, output=folder / f"run-{index + 1}", overwrite=True)
        if report.status != "ok":
            raise SystemExit(f"run {index + 1} ended {report.status}: {report.error} ({run_dir})")
        reports.append(report.to_dict())
        log.info("run %d: %s", index + 1, {s["name"]: format_speedup(s["metrics"].get("speedup")) for s in reports[-1]["stages"][1:]})
    return reports


def overlap(figures: list[dict[str, Any]]) -> bool:
    """Whether the intervals of ``figures`` (speed-up records) share at least one value."""
    return max(f["low"] for f in figures) <= min(f["high"] for f in figures)


def render_markdown(reports: list[dict[str, Any]], command: str) -> str:
    timing = reports[0]["timing"]
    names = [s["name"] for s in reports[0]["stages"][1:]]
    header = ["stage", *(f"run {i + 1}" for i in range(len(reports))), "intervals overlap"]
    lines = [
        f"# Speed-up repeatability: {reports[0]['pipeline']['model']['source']}, {len(reports)} runs",
        "",
        f"Each run: `optkit run` of the same pipeline, {timing['compare']} timing, {timing['iters']} rounds after "
        f"{timing['warmup']} warm-up; speed-up over the baseline with its {timing['confidence']:.0%} interval "
        f"({timing['speedup_interval']}). Environment: {reports[0]['environment']['device']}, "
        f"{reports[0]['environment']['threads']} thread(s), torch {reports[0]['environment']['torch']}.",
        "",
        *[f"- run {i + 1}: {noise_warning(r['timing'].get('noise')) or 'noise check passed'}" for i, r in enumerate(reports)],
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for position, name in enumerate(names, start=1):
        figures = [r["stages"][position]["metrics"]["speedup"] for r in reports]
        lines.append(f"| {name} | " + " | ".join(format_speedup(f) for f in figures) + f" | {'yes' if overlap(figures) else '**no**'} |")
    lines += ["", f"Command: `{command}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", type=Path, help="pipeline file (default: ResNet-18 at 64x64, fuse_bn + export_onnx)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    command = " ".join([".venv/bin/python", "benchmarks/speedup_repeatability.py", *(argv if argv is not None else sys.argv[1:])])
    with tempfile.TemporaryDirectory() as scratch:
        pipeline_file = args.pipeline
        if pipeline_file is None:
            pipeline_file = Path(scratch) / "small.yaml"
            pipeline_file.write_text(SMALL_PIPELINE, encoding="utf-8")
        reports = repeat(pipeline_file, args.runs, Path(scratch) / "runs")
    markdown = render_markdown(reports, command)
    stages = [s["name"] for s in reports[0]["stages"][1:]]
    result = {
        "command": command,
        "overlap": {name: overlap([r["stages"][i]["metrics"]["speedup"] for r in reports]) for i, name in enumerate(stages, start=1)},
        "reports": reports,
    }
    atomic_write_text(args.output / "speedup_repeatability.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.output / "speedup_repeatability.md", markdown)
    print(markdown)
    return 0 if all(result["overlap"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
