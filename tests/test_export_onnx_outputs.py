"""export_onnx: every opset gives a valid model or a refusal before export; outputs selected and
named; parity per output tensor."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from optkit.errors import StageError
from optkit.measure.drift import compare_outputs
from optkit.measure.outputs import output_leaves
from optkit.passes import PassContext
from optkit_plugins.export_onnx import ExportOnnx
from optkit_plugins.export_onnx.exporter import output_layout
from optkit_plugins.export_onnx.opsets import checker_problem, fix_split_num_outputs, graph_opset
from optkit_plugins.export_onnx.trace_state import release_inference_tensors, traceable_state
from optkit_plugins.export_onnx.verify import Parity, parity_by_output, parity_failure

CLOSE = {"atol": 1e-5, "rtol": 1e-3}


class Chunky(nn.Module):
    """torch.chunk (even and uneven): its opset-16/17 dynamo export carried Split-18's num_outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.odd = nn.Conv2d(3, 7, 1)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, 1)  # 3 + 3
        c, d, e = self.odd(x).chunk(3, 1)  # 3 + 3 + 1
        return torch.cat([a * b, c - d, e], 1)


class Bilinear(nn.Module):
    """A bilinear resize: no exporter writes it at opset 7 (TorchScript refuses, dynamo keeps 18)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="bilinear", align_corners=False)


class ThreeOutputs(nn.Module):
    """(boxes-like large values, {"scores": small values, "feats": [map]})."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.mean((2, 3)) * 500, {"scores": y.sigmoid().mean((2, 3)) * 1e-3, "feats": [y]}


def export(model: nn.Module, tmp_path: Path, shape=(1, 3, 16, 16), **options):
    out = tmp_path / "stage"
    out.mkdir(exist_ok=True)
    ctx = PassContext(
        device=torch.device("cpu"),
        example_input=torch.randn(*shape, generator=torch.Generator().manual_seed(0)),
        output_dir=out,
        logger=logging.getLogger("test.export_onnx"),
        stage_index=1,
    )
    return ExportOnnx(ExportOnnx.Options(**options)).apply(model.eval(), ctx), ctx


def test_raw_opset17_dynamo_export_is_invalid_and_the_split_fix_repairs_it():
    torch.manual_seed(0)
    model, x = Chunky().eval(), torch.rand(2, 3, 8, 8)
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=17, dynamic_shapes=({0: "batch"},))
    proto = program.model_proto
    assert graph_opset(proto) == 17
    assert "num_outputs" in checker_problem(proto)  # what made yolo11n's opset-17 file invalid
    assert fix_split_num_outputs(proto) == 1  # the even chunk; onnxscript writes the uneven one's sizes
    assert checker_problem(proto) is None


@pytest.mark.parametrize("opset", [13, 16, 17, 18, 21])
def test_every_accepted_opset_gives_a_valid_model_that_matches_torch(tmp_path, opset):
    torch.manual_seed(0)
    model = Chunky()
    artifact, ctx = export(model, tmp_path, opset=opset)
    proto = onnx.load(str(artifact.path))
    assert graph_opset(proto) == opset == ctx.details["opset"]
    assert checker_problem(proto) is None
    used = ctx.details["export_attempts"][-1]
    assert used["ok"] and used["route"] == ctx.details["exporter"]
    # Opsets 16-17: dynamo plus the Split fix; below 16 torch keeps opset 18, so TorchScript writes it.
    expected = {13: "torchscript", 16: "dynamo", 17: "dynamo", 18: "dynamo", 21: "dynamo"}[opset]
    assert ctx.details["exporter"] == expected
    if opset in (16, 17):
        assert used["splits_fixed"] == 1
    if opset == 13:
        assert "opset 18, not the requested 13" in ctx.details["export_attempts"][0]["reason"]
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(artifact.load(torch.device("cpu"))(x), model(x), **CLOSE)


def test_an_opset_no_exporter_can_write_is_refused_before_anything_is_saved(tmp_path):
    with pytest.raises(StageError) as refusal:
        export(Bilinear(), tmp_path, opset=7)
    message = str(refusal.value)
    assert message.startswith("export_onnx: no exporter produced opset-7 ONNX model")
    assert "dynamo: the exporter produced opset 18, not the requested 7" in message
    assert "torchscript: " in message and "upsample_bilinear2d" in message
    assert "opset 18 or above is exported natively" in message
    assert not (tmp_path / "stage" / "model.onnx").exists()


def test_opset_outside_the_accepted_range_is_refused_by_the_options():
    with pytest.raises(ValueError, match="less than or equal to 23"):
        ExportOnnx.Options(opset=24)


def test_outputs_are_selected_by_index_name_or_path_and_named(tmp_path):
    torch.manual_seed(0)
    model = ThreeOutputs()
    artifact, ctx = export(model, tmp_path, outputs=["output_1.scores", 0])
    assert ctx.details["output_names"] == ["output_1.scores", "output_0"]
    assert [o.name for o in onnx.load(str(artifact.path)).graph.output] == ["output_1.scores", "output_0"]
    assert artifact.output_selection == [1, 0]
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        y, rest = model(x)
    got = artifact.load(torch.device("cpu"))(x)
    torch.testing.assert_close(got, (rest["scores"], y), **CLOSE)

    artifact, ctx = export(model, tmp_path, outputs=["[0]"], output_names=["pred"])
    assert ctx.details["output_names"] == ["pred"] and artifact.output_selection == [0]
    assert [o.name for o in onnx.load(str(artifact.path)).graph.output] == ["pred"]


def test_an_unknown_output_is_refused_listing_every_output(tmp_path):
    with pytest.raises(StageError, match=r"option outputs: 'boxes' names no output; the model's outputs are 0: output_0 \[1, 4\], 1: output_1.scores \[1, 4\], 2: output_1.feats.0 \[1, 4, 16, 16\]"):
        export(ThreeOutputs(), tmp_path, outputs=["boxes"])
    with pytest.raises(StageError, match="index 3 is out of range"):
        export(ThreeOutputs(), tmp_path, outputs=[3])


def test_parity_is_per_output_each_scaled_by_its_own_magnitude(tmp_path):
    torch.manual_seed(0)
    artifact, ctx = export(ThreeOutputs(), tmp_path)
    rows = {row["output"]: row for row in ctx.details["parity"]["per_output"]}
    assert set(rows) == {"output_0", "output_1.scores", "output_1.feats.0"}
    # scores are ~5e-4, the first output ~100: each has its own allowed difference.
    assert rows["output_1.scores"]["allowed"] < 1e-5 + 1e-3 * 1e-3 < rows["output_0"]["allowed"]
    assert all(row["excess"] <= 1 for row in rows.values())
    example = ctx.details["parity"]["inputs"]["example"]
    assert [row["name"] for row in example["outputs"]] == ["output_0", "output_1.scores", "output_1.feats.0"]


def test_a_broken_small_output_fails_where_one_tolerance_for_all_passed():
    reference = (torch.full((1, 4), 480.0), torch.full((1, 80), 1e-4))
    broken = (reference[0].clone(), reference[1] + 0.01)  # every score off by 100x its value
    drift = compare_outputs(broken, reference)
    whole = drift.max_abs <= 1e-5 + 1e-3 * drift.reference_max_abs
    assert whole  # one tolerance for every output (0.48) let it through
    problem = parity_failure({"example": Parity(drift, batch=1)}, atol=1e-5, rtol=1e-3)
    assert problem is not None and "output output_1 drifted by max |Δ| = 0.01" in problem and "on input example" in problem
    rows = {row["output"]: row for row in parity_by_output({"example": Parity(drift, batch=1)}, 1e-5, 1e-3)}
    assert rows["output_0"]["excess"] == 0 and rows["output_1"]["excess"] > 90


def test_output_names_follow_the_exporters_flattening():
    t = torch.zeros(1)
    assert [leaf.path for leaf in output_leaves((t, {"b": t, "a": [t]}))] == ["[0]", "[1]['b']", "[1]['a'][0]"]
    assert output_layout((t, {"b": t, "a": [t]})).names == ["output_0", "output_1.b", "output_1.a.0"]


def test_inference_tensors_and_shape_caches_are_made_traceable_and_put_back():
    class Caching(nn.Module):
        """Caches a tensor keyed by the input's shape, as Ultralytics' Detect caches anchors."""

        def __init__(self):
            super().__init__()
            self.shape = None

        def forward(self, x):
            if self.shape != x.shape:
                self.anchors, self.shape = torch.ones_like(x), x.shape
            return x * self.anchors

    model = Caching()
    with torch.inference_mode():
        model(torch.rand(2, 3))
    assert model.anchors.is_inference()
    assert release_inference_tensors(model) == ["(root).anchors"]
    assert not model.anchors.is_inference()
    cached = model.anchors
    with traceable_state(model):
        model.anchors = "left behind by a trace"
        model.extra = 1
    assert model.anchors is cached and not hasattr(model, "extra")


def test_a_pipeline_exporting_one_output_is_compared_with_that_output(tmp_path, host):
    import textwrap

    from optkit.config.pipeline import load_pipeline
    from optkit.run.runner import run_pipeline

    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""
        model: {{source: "python:test_export_onnx_outputs:ThreeOutputs", input_shape: [1, 3, 16, 16]}}  # this file, on sys.path under pytest
        measure: {{warmup: 0, iters: 1}}
        passes:
          - export_onnx: {{outputs: [output_1.scores], verify_batch_sizes: [2]}}
          - fuse_bn
        output: {tmp_path / "run"}
    """))
    report, _ = run_pipeline(load_pipeline(path, host.get_pass), host)
    assert report.status == "ok", report.error
    baseline, export, fuse = report.stages
    assert [row.name for row in baseline.metrics.drift.outputs] == ["output_0", "output_1.scores", "output_1.feats.0"]
    assert [row.name for row in export.metrics.drift.outputs] == ["output"]  # the scores, alone
    assert export.metrics.drift.outputs[0].shape == [1, 4]
    assert export.metrics.drift.previous.max_abs <= 1e-5 + 1e-3 * 1e-3
    # The stage after an export is compared with the model before it (the export changed nothing).
    assert [row.name for row in fuse.metrics.drift.previous.outputs] == ["output_0", "output_1.scores", "output_1.feats.0"]
