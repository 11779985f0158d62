"""An observer: every finished stage becomes one JSON line in ``stages.jsonl`` of the run folder.

Observers see each stage start and finish (and its progress); they cannot change the run, and
one that raises is logged and skipped, so a failing logger never loses a run.
"""

from __future__ import annotations

import json

from optkit import hookimpl

__all__ = ["LOG_NAME"]

#: The file written in the run folder.
LOG_NAME = "stages.jsonl"


@hookimpl
def optkit_stage_finished(result, run):
    line = {
        "stage": result.name,
        "index": result.index,
        "status": result.status,
        "params": result.metrics.params,  # None for a stage that failed before it was measured
        "error": result.error,
    }
    with open(run.output_dir / LOG_NAME, "a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")
