"""quantize_onnx ``mode: auto``: the search on toys (a layer int8 cannot hold, an attention model),
the search's choices on fakes, the sensitivity ranking and the options. No timing assertions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from optkit.testing import run_pass
from optkit_plugins.quantize_onnx import QuantizeOnnx
from optkit_plugins.quantize_onnx.auto import AutoSearch, Candidate, attention_matmuls, graph_family, starting_candidates
from optkit_plugins.quantize_onnx.sensitivity import CLEAN_DB, sqnr_db

#: auto, calibrated on 4 random batches, untimed (speed is the benchmark's business).
AUTO = {"mode": "auto", "calibration": {"random": True, "batches": 4}, "auto": {"timing_rounds": 0}}
QUICK = {"warmup": 0, "iters": 1, "flops": False}


def run_auto(tmp_path, toy: str, options=None):
    return run_pass(
        "quantize_onnx",
        options or AUTO,
        tmp_path=tmp_path,
        source=f"python:quantize_auto_toys:{toy}",
        input_shape=(1, 3, 32, 32),
        before=["export_onnx"],
        measure=QUICK,
    )


def exported(run) -> Path:
    """The float ONNX file export_onnx wrote before quantize_onnx."""
    return run.run_dir / next(a for a in run.report["stages"][1]["artifacts"] if a.endswith("model.onnx"))


def node_reading(model_path: Path, weight: str) -> str:
    """The name of the node whose weight input is ``weight``."""
    return next(node.name for node in onnx.load(str(model_path)).graph.node if weight in node.input)


def test_auto_keeps_the_sensitive_layer_in_float_and_says_why(tmp_path):
    run = run_auto(tmp_path, "one_sensitive_layer")
    auto = run.stage["details"]["auto"]
    sensitive = node_reading(exported(run), "sensitive.weight")

    # Every calibration method fails the tolerance quantizing everything: the large weight
    # rounds the layer's other weights to zero.
    assert auto["family"] == "convolutional"
    first = [trial for trial in auto["candidates"] if trial["origin"].startswith("convolutional family")]
    assert [trial["scheme"] for trial in first] == ["static minmax", "static percentile"]
    assert all(not trial["holds_tolerance"] and trial["cosine"] < 0.5 for trial in first)
    # The fallback keeps the sensitive layer in float, first, with the largest error by far, and the tolerance holds.
    kept = auto["kept_in_float"]
    assert kept[0]["node"] == sensitive and kept[0]["lost_db"] > 20
    assert all(entry["lost_db"] < kept[0]["lost_db"] / 4 for entry in kept[1:])
    assert "fallback" in kept[0]["why"] and auto["chosen"]["holds_tolerance"] and auto["chosen"]["cosine"] >= 0.99
    assert sensitive in run.stage["details"]["graph"]["float_compute"]
    # The runner's gate agrees on its own batch.
    assert run.metrics["drift"]["previous"]["cosine"] >= 0.99
    assert run.stage["details"]["calibration"]["method"] == auto["chosen"]["scheme"].split(",")[0].split()[1]


def test_auto_on_an_attention_toy_quantizes_its_matmuls_dynamically_or_keeps_attention_in_float(tmp_path):
    run = run_auto(tmp_path, "tiny_vit")
    auto, details = run.stage["details"]["auto"], run.stage["details"]
    float_graph = onnx.load(str(exported(run)))

    assert auto["family"] == "attention"
    assert auto["candidates"][0]["scheme"] == "dynamic MatMul/Gemm"
    assert auto["chosen"]["holds_tolerance"]
    if auto["chosen"]["mode"] == "dynamic":
        # The convolution stays float (ConvInteger is slower than a float Conv); MatMuls run on integers.
        assert auto["float_op_types"] == ["Conv"] and details["graph"]["ops"].get("MatMulInteger", 0) >= 8
        assert "calibration" not in details
    else:
        kept = {entry["node"] for entry in auto["kept_in_float"]}
        assert len(attention_matmuls(float_graph)) == 4 and kept >= set(attention_matmuls(float_graph))
    assert run.metrics["drift"]["previous"]["cosine"] >= 0.99


def graph(*nodes: onnx.NodeProto, weights: tuple[str, ...] = ()) -> onnx.ModelProto:
    initializers = [onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), name) for name in weights]
    return onnx.helper.make_model(onnx.helper.make_graph(list(nodes), "g", [], [], initializers))


def test_the_family_and_its_first_candidates_come_from_the_graph():
    node = onnx.helper.make_node
    attention = graph(
        node("MatMul", ["x", "wq"], ["q"], name="q"),
        node("MatMul", ["q", "k"], ["s"], name="scores"),
        node("Softmax", ["s"], ["p"], name="softmax"),
        node("MatMul", ["p", "v"], ["o"], name="mix"),
        node("Conv", ["o", "wc"], ["y"], name="patches"),
        weights=("wq", "wc"),
    )
    assert graph_family(attention) == "attention" and attention_matmuls(attention) == ["scores", "mix"]
    candidates = starting_candidates(attention, ["minmax", "entropy"])
    assert [(c.mode, c.method, c.float_nodes) for c in candidates] == [
        ("dynamic", None, ()),
        ("static", "minmax", ("scores", "mix")),
        ("static", "entropy", ("scores", "mix")),
    ]
    # Where uint8 x int8 products saturate, the attention family also tries 8-bit uint8 weights, second.
    saturating = starting_candidates(attention, ["minmax"], int8_saturates=True)
    assert [(c.mode, c.uint8_weights) for c in saturating] == [("dynamic", False), ("dynamic", True), ("static", False)]
    assert saturating[1].label == "dynamic MatMul/Gemm, uint8 weights"
    convolutional = graph(node("Conv", ["x", "w"], ["y"], name="c"), node("Gemm", ["y", "w"], ["z"], name="g"), weights=("w",))
    assert graph_family(convolutional) == "convolutional"
    for saturates in (False, True):
        assert [(c.mode, c.method) for c in starting_candidates(convolutional, ["percentile"], saturates)] == [("static", "percentile")]


def test_on_a_cpu_whose_int8_products_saturate_auto_tries_and_writes_uint8_weights(tmp_path, monkeypatch):
    from optkit import CpuInfo
    from optkit_plugins.quantize_onnx import plugin

    # An AVX2 CPU without VNNI (dynamic int8 then takes 7-bit weights), whatever CPU runs the test.
    monkeypatch.setattr(plugin, "cpu_info", lambda: CpuInfo("avx2, no vnni", "x86_64", ("avx2", "fma")))
    offered: list[Candidate] = []

    def only_uint8(model, methods, int8_saturates=False):
        offered.extend(starting_candidates(model, methods, int8_saturates))
        return [candidate for candidate in offered if candidate.uint8_weights]

    # The search is given the uint8 candidate alone, so that the file it writes is that candidate's.
    monkeypatch.setattr(plugin, "starting_candidates", only_uint8)
    run = run_auto(tmp_path, "tiny_vit")
    auto, details = run.stage["details"]["auto"], run.stage["details"]

    assert [candidate.label for candidate in offered][:2] == ["dynamic MatMul/Gemm", "dynamic MatMul/Gemm, uint8 weights"]
    assert auto["chosen"]["scheme"] == "dynamic MatMul/Gemm, uint8 weights" and auto["chosen"]["holds_tolerance"]
    assert details["weight_type"] == "uint8" and details["reduce_range"] is False
    int8 = onnx.load(str(run.run_dir / next(a for a in run.report["stages"][2]["artifacts"] if a.endswith(".onnx"))))
    initializers = {init.name: init.data_type for init in int8.graph.initializer}
    weights = [initializers[node.input[1]] for node in int8.graph.node if node.op_type == "MatMulInteger" and node.input[1] in initializers]
    assert len(weights) >= 8 and set(weights) == {onnx.TensorProto.UINT8}
    assert run.metrics["drift"]["previous"]["cosine"] >= 0.99


class Fakes:
    """A search on fakes: each candidate's cosine from a function of it, timings from a table."""

    def __init__(self, tmp_path: Path, cosine, speeds=None, ranking=()):
        self.cosine, self.speeds, self.ranking = cosine, speeds, list(ranking)
        self.quantized: list[Candidate] = []
        self.by_path: dict[Path, Candidate] = {}
        self.tmp_path = tmp_path

    def quantize(self, candidate: Candidate, path: Path) -> Path:
        self.quantized.append(candidate)
        self.by_path[path] = candidate
        return path

    def search(self, compute_nodes: int = 10, share: float = 0.5) -> AutoSearch:
        fakes = self

        class FakeSimilarity:
            samples = 32

            def measure(self, path: Path):
                return fakes.cosine(fakes.by_path[path]), None

        def timed(path):
            return {"speedup": self.speeds[self.by_path[path].label]}

        return AutoSearch(
            quantize=self.quantize,
            similarity=FakeSimilarity(),  # type: ignore[arg-type]
            holds=lambda cosine, top1: cosine >= 0.99,
            rank=lambda trial: [(node, {"node": node, "lost_db": 10.0 - i}) for i, node in enumerate(self.ranking)],
            compute_nodes=compute_nodes,
            max_float_share=share,
            time=timed if self.speeds else None,
            folder=self.tmp_path,
        )


def test_the_fastest_accurate_candidate_is_chosen(tmp_path):
    candidates = [Candidate("dynamic"), Candidate("static", "minmax"), Candidate("static", "percentile")]
    cosines = {"dynamic MatMul/Gemm": 0.995, "static minmax": 0.98, "static percentile": 0.993}
    fakes = Fakes(tmp_path, lambda c: cosines[c.label], speeds={"dynamic MatMul/Gemm": 1.1, "static percentile": 1.6})
    chosen = fakes.search().run(candidates)
    assert chosen.candidate.label == "static percentile" and chosen.speed == {"speedup": 1.6}
    assert len(fakes.quantized) == 3  # no fallback: two candidates held


def test_once_a_calibration_holds_the_same_graph_is_not_calibrated_again(tmp_path):
    candidates = [Candidate("static", "minmax"), Candidate("static", "percentile"), Candidate("static", "percentile", float_nodes=("a",))]
    fakes = Fakes(tmp_path, lambda c: 0.995)
    chosen = fakes.search().run(candidates)
    # percentile would give the same graph as minmax, as fast: skipped; another graph (a node in float) is still tried.
    assert [c.label for c in fakes.quantized] == ["static minmax", "static percentile, 1 nodes in float"]
    assert chosen.candidate.label == "static minmax"


@pytest.mark.parametrize("keep_float", [True, False])
def test_int8_slower_than_float_keeps_the_float_graph_unless_told_otherwise(tmp_path, monkeypatch, keep_float):
    # The timing is faked (speed is the benchmark's business): int8 at 0.8x float's speed, the whole interval below 1.
    slower = {"speedup": 0.8, "low": 0.7, "high": 0.9, "int8_ms": 5.0, "float_ms": 4.0, "rounds": 3}
    monkeypatch.setattr("optkit_plugins.quantize_onnx.plugin.speed_versus_float", lambda *args, **kwargs: slower)
    options = {**AUTO, "auto": {"timing_rounds": 3, "keep_float_if_slower": keep_float}}
    run = run_auto(tmp_path, "one_sensitive_layer", options)
    auto = run.stage["details"]["auto"]
    assert run.stage["status"] == "ok" and "slower than float on this CPU (0.80x [0.70-0.90]" in auto["note"]
    written = [a for a in run.report["stages"][2]["artifacts"] if a.endswith(".onnx")]
    if keep_float:
        # The stage's product is a copy of the float file export_onnx wrote, and nothing int8 is left.
        assert auto["chosen"]["mode"] == "float" and auto["chosen"]["rejected"]["latency_vs_float"] == slower
        assert written == ["stages/02-quantize_onnx/model.onnx"] and not list(run.run_dir.rglob("model_int8.onnx"))
        kept, float_graph = (onnx.load(str(path)).graph for path in (run.run_dir / written[0], exported(run)))
        assert [n.op_type for n in kept.node] == [n.op_type for n in float_graph.node] and "QuantizeLinear" not in str(kept.node)
        assert run.metrics["size_bytes"] == run.report["stages"][1]["metrics"]["size_bytes"]
        assert "float graph is kept" in auto["note"] and "calibration" not in run.stage["details"]
    else:
        assert auto["chosen"]["mode"] == "static" and written == ["stages/02-quantize_onnx/model_int8.onnx"]
        assert run.metrics["size_bytes"] < run.report["stages"][1]["metrics"]["size_bytes"]


def test_a_tie_keeps_int8(tmp_path, monkeypatch):
    tie = {"speedup": 0.97, "low": 0.85, "high": 1.1, "int8_ms": 5.0, "float_ms": 4.9, "rounds": 3}
    monkeypatch.setattr("optkit_plugins.quantize_onnx.plugin.speed_versus_float", lambda *args, **kwargs: tie)
    run = run_auto(tmp_path, "one_sensitive_layer", {**AUTO, "auto": {"timing_rounds": 3}})
    auto = run.stage["details"]["auto"]
    assert auto["chosen"]["mode"] == "static" and "note" not in auto and run.metrics["size_bytes"] < run.report["stages"][1]["metrics"]["size_bytes"]


def test_the_fallback_keeps_more_worst_nodes_in_float_until_the_tolerance_holds_then_narrows(tmp_path):
    # The tolerance holds once nodes a, b and c are all float.
    ranking = ["a", "b", "c", "d", "e", "f"]
    fakes = Fakes(tmp_path, lambda c: 0.999 if {"a", "b", "c"} <= set(c.float_nodes) else 0.9, ranking=ranking)
    search = fakes.search(compute_nodes=10, share=0.5)
    chosen = search.run([Candidate("static", "minmax")])
    # 1, 2 fail, 4 holds; then the gap is halved: 3 holds (and 2 failed already).
    assert [len(c.float_nodes) for c in fakes.quantized] == [0, 1, 2, 4, 3]
    assert chosen.candidate.float_nodes == ("a", "b", "c") and chosen.holds
    assert list(search.ranked) == ranking and search.ranked["a"] == {"node": "a", "lost_db": 10.0}
    assert "fallback from static minmax" in chosen.candidate.origin


def test_the_fallback_stops_at_its_share_and_the_most_accurate_is_returned(tmp_path):
    fakes = Fakes(tmp_path, lambda c: 0.5 + 0.01 * len(c.float_nodes), ranking=list("abcdefghij"))
    search = fakes.search(compute_nodes=10, share=0.3)
    chosen = search.run([Candidate("static", "minmax"), Candidate("static", "percentile")])
    # 1, 2, then the bound of 3 (30% of 10): never more.
    assert [len(c.float_nodes) for c in fakes.quantized] == [0, 0, 1, 2, 3]
    assert not chosen.holds and chosen.candidate.float_nodes == ("a", "b", "c")


def test_a_candidate_onnxruntime_cannot_quantize_fails_alone(tmp_path):
    fakes = Fakes(tmp_path, lambda c: 0.999)
    search = fakes.search()
    quantize = search.quantize

    def refuse_percentile(candidate: Candidate, path: Path) -> Path:
        if candidate.method == "percentile":
            raise ValueError("Too many bins for data range. Cannot create 2048 finite-sized bins.")
        return quantize(candidate, path)

    search.quantize = refuse_percentile
    chosen = search.run([Candidate("static", "percentile"), Candidate("static", "minmax")])
    assert chosen.candidate.method == "minmax"
    assert search.trials[0].as_dict()["error"].startswith("ValueError: Too many bins") and not search.trials[0].holds


def test_sqnr_in_decibels():
    reference = np.array([3.0, 4.0])
    assert sqnr_db(reference, reference) == CLEAN_DB
    assert sqnr_db(reference, reference * 1.1) == pytest.approx(20.0, abs=1e-9)  # noise 10% of the signal's amplitude
    assert sqnr_db(reference, np.zeros(2)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "static", "auto": {"timing_rounds": 0}}, "applies to mode auto, not static"),
        ({"mode": "auto", "calibration": {"method": "entropy"}}, "mode auto chooses it"),
        ({"mode": "auto", "auto": {"calibrations": []}}, "at least 1"),
        ({"mode": "auto", "auto": {"max_float_share": 0}}, "greater than 0"),
        ({"mode": "auto", "auto": {"calibrations": ["kl"]}}, "minmax"),
        ({"mode": "auto", "auto": {"samples": 3}}, "Extra inputs are not permitted"),
    ],
)
def test_auto_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        QuantizeOnnx.Options(**options)
    assert QuantizeOnnx.Options(mode="auto").auto.calibrations == ["minmax", "percentile"]
