"""The observer: one JSON line per finished stage in the run folder."""

from __future__ import annotations

import json

from optkit.testing import run_pass
from optkit_example_plugin.stage_log import LOG_NAME


def test_every_stage_is_logged(tmp_path):
    run = run_pass("strip_dropout", tmp_path=tmp_path, model_kwargs={"dropout": 0.5})
    lines = [json.loads(line) for line in (run.run_dir / LOG_NAME).read_text().splitlines()]
    assert [(line["stage"], line["index"], line["status"]) for line in lines] == [("baseline", 0, "ok"), ("strip_dropout", 1, "ok")]
    assert lines[1]["params"] == run.metrics["params"]

