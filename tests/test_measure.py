"""Parameters, size, latency statistics and drift."""

from __future__ import annotations

import collections
import math
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from optkit.config.pipeline import MeasureSpec
from optkit.measure.drift import compare_outputs, drift_exceeds
from optkit.measure.latency import Contender, summarize_times, time_callable, time_round_robin
from optkit.measure.noise import check_noise
from optkit.measure.params import count_params
from optkit.measure.size import state_dict_bytes
from optkit.measure.stage import measure


def test_params_total_trainable_nonzero_and_shared():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 2))
    model[3].weight.requires_grad_(False)
    with torch.no_grad():
        shared.weight[:2] = 0
    counts = count_params(model)
    assert counts["params"] == 20 + 10  # the shared layer once
    assert counts["trainable_params"] == 30 - 8
    assert counts["nonzero_params"] == 30 - 8 - int((shared.bias == 0).sum()) - int((model[3].bias == 0).sum()) - int((model[3].weight == 0).sum())
    assert counts["sparsity"] == pytest.approx(1 - counts["nonzero_params"] / 30)


def test_params_on_meta_have_no_nonzero_count():
    with torch.device("meta"):
        model = nn.Linear(3, 2)
    assert count_params(model) == {"params": 8, "trainable_params": 8, "nonzero_params": None, "sparsity": None}


def test_size_is_the_saved_state_dict():
    model = nn.Linear(256, 256)
    raw = 4 * (256 * 256 + 256)
    assert raw < state_dict_bytes(model) < raw + 4096


def test_summarize_times_known_values():
    stats = summarize_times([5.0, 1.0, 4.0, 2.0, 3.0])
    assert stats["p50"] == 3.0
    assert (stats["p10"], stats["p90"]) == (pytest.approx(1.4), pytest.approx(4.6))
    assert stats["mean"] == 3.0
    assert stats["std"] == pytest.approx(math.sqrt(2.5))
    assert stats["n"] == 5
    assert stats["samples"] == [5.0, 1.0, 4.0, 2.0, 3.0]  # in the order taken
    # five timings: no pair of order statistics reaches 95%, so [min, max] with its coverage 1 - 2/32
    assert stats["p50_interval"] == {"low": 1.0, "high": 5.0, "confidence": pytest.approx(1 - 2 / 32)}
    assert summarize_times([7.0]) == {"p10": 7.0, "p50": 7.0, "p90": 7.0, "mean": 7.0, "std": 0.0, "n": 1, "samples": [7.0],
                                      "p50_interval": {"low": 7.0, "high": 7.0, "confidence": 0.0}}
    with pytest.raises(ValueError):
        summarize_times([])


def test_time_callable_on_cpu_counts_calls_and_records_settings():
    calls = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(torch.is_inference_mode_enabled())
        time.sleep(0.002)
        return x

    stats = time_callable(fn, torch.zeros(3, 5), torch.device("cpu"), warmup=2, iters=4)
    assert len(calls) == 6 and all(calls)
    assert stats["n"] == 4 and stats["warmup"] == 2 and stats["batch"] == 3
    assert stats["threads"] == torch.get_num_threads()
    assert stats["device"] == "cpu" and stats["timer"] == "perf_counter"
    assert 2.0 <= stats["p50"] <= stats["p90"] and stats["mean"] >= 2.0
    with pytest.raises(ValueError, match="iters"):
        time_callable(fn, torch.zeros(1), torch.device("cpu"), warmup=0, iters=0)


def test_time_callable_against_a_reference_pairs_the_calls_round_by_round():
    calls: list[str] = []

    def sleeper(name: str, delay_s: float):
        def fn(x: torch.Tensor) -> torch.Tensor:
            calls.append(name)
            time.sleep(delay_s)
            return x

        return fn

    stats = time_callable(sleeper("new", 0.001), torch.zeros(2, 3), torch.device("cpu"), 1, 9, against=sleeper("old", 0.004))
    rounds = [sorted(calls[i:i + 2]) for i in range(0, len(calls), 2)]
    assert len(rounds) == 10 and all(r == ["new", "old"] for r in rounds)  # one warm-up round, then 9 timed
    assert stats["n"] == stats["against"]["n"] == 9
    figure = stats["speedup"]
    assert figure["paired"] and figure["low"] <= figure["value"] <= figure["high"]
    ratios = sorted(a / b for a, b in zip(stats["against"]["samples"], stats["samples"]))
    assert figure["value"] == pytest.approx(ratios[4])  # the median of the per-round ratios
    assert "against" not in time_callable(sleeper("x", 0), torch.zeros(1), torch.device("cpu"), 0, 2)


def test_round_robin_calls_each_contender_once_a_round_in_a_seeded_shuffled_order():
    calls: list[str] = []

    def contender(name: str, delay_s: float) -> Contender:
        def fn(x: torch.Tensor) -> torch.Tensor:
            calls.append(name)
            time.sleep(delay_s)
            return x

        return Contender(fn)

    contenders = {"a": contender("a", 0.001), "b": contender("b", 0.004), "c": contender("c", 0.002)}
    records = time_round_robin(contenders, torch.zeros(2, 3), torch.device("cpu"), warmup=1, rounds=12)
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert len(rounds) == 13 and all(sorted(r) == ["a", "b", "c"] for r in rounds)  # warm-up round first
    assert len({tuple(r) for r in rounds}) > 2  # the order changes from round to round ...
    calls.clear()
    time_round_robin(contenders, torch.zeros(2, 3), torch.device("cpu"), warmup=1, rounds=12)
    assert [calls[i:i + 3] for i in range(0, len(calls), 3)] == rounds  # ... the same way for the same seed
    assert [records[k]["n"] for k in "abc"] == [12, 12, 12] and records["b"]["warmup"] == 1 and records["b"]["batch"] == 2
    assert records["a"]["p50"] >= 1.0 and records["b"]["p50"] >= 4.0 and records["b"]["p50"] > records["a"]["p50"]
    with pytest.raises(ValueError, match="rounds"):
        time_round_robin({"a": contender("a", 0.0)}, torch.zeros(1), torch.device("cpu"), rounds=0)


def test_noise_check_reports_the_robust_spread_of_a_fixed_workload():
    loose = check_noise(torch.device("cpu"), max_cv=1e6, iters=10, warmup=1)
    assert loose["n"] == 10 and loose["workload"] == "768x768 float32 matrix product on cpu"
    assert loose["cv"] > 0 and loose["p50_ms"] > 0 and "vary" not in loose.get("why", "")
    assert 0 < loose["cpu_share"] and loose["min_cpu_share"] == 0.8
    # No machine times a workload with a spread under 1e-9: the same check with that bound calls it noisy.
    strict = check_noise(torch.device("cpu"), max_cv=1e-9, iters=10, warmup=1)
    assert strict["noisy"] is True and "robust CV" in strict["why"]


def test_noise_check_sees_other_processes_take_the_cores():
    """A steady load slows every call alike (the spread stays low); the CPU share shows it."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        time.sleep(0.5)
        busy = check_noise(torch.device("cpu"), max_cv=1e6, iters=30, warmup=2)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert busy["noisy"] is True and busy["cpu_share"] < 0.8
    assert "other processes compete" in busy["why"] and "vary" not in busy["why"]


@pytest.mark.cuda
def test_cuda_round_robin_times_torch_with_events_and_a_self_synchronizing_runtime_by_the_host():
    device = torch.device("cuda", 0)
    x = torch.randn(2048, 2048, device=device)
    records = time_round_robin({"events": Contender(lambda t: t @ t, cuda_events=True),
                                "host": Contender(lambda t: [t @ t for _ in range(20)], cuda_events=False)},
                               x, device, warmup=3, rounds=10)
    assert (records["events"]["timer"], records["host"]["timer"]) == ("cuda_event", "perf_counter")
    # Both see the whole GPU work of their call: 20 products take far longer than one.
    assert records["host"]["p50"] > 10 * records["events"]["p50"]


@pytest.mark.cuda
def test_cuda_latency_is_synchronized_and_peak_memory_recorded():
    device = torch.device("cuda", 0)
    model = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 2048)).to(device)
    x = torch.randn(256, 2048, device=device)
    result = measure(model, x, MeasureSpec(warmup=3, iters=10), device)
    latency = result.metrics.latency_ms
    assert latency.timer == "cuda_event" and latency.device == "cuda:0" and latency.n == 10
    assert latency.p50 > 0.0
    assert latency.cudnn_benchmark is not None
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert result.metrics.peak_memory_bytes >= weights
    # a slow kernel is timed whole: 20 chained matmuls take ~20x one
    one = time_callable(lambda t: t @ t, torch.randn(2048, 2048, device=device), device, 3, 10)["p50"]
    many = time_callable(lambda t: [t @ t for _ in range(20)], torch.randn(2048, 2048, device=device), device, 3, 10)["p50"]
    assert many > 10 * one


Pair = collections.namedtuple("Pair", "logits features")


def test_drift_of_nested_outputs():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    features = torch.ones(2, 4)
    changed = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 2.0]])
    for wrap in (lambda a, b: (a, b), lambda a, b: {"a_logits": a, "b_features": b}, lambda a, b: Pair(a, b)):
        drift = compare_outputs(wrap(changed, features), wrap(logits, features))
        assert drift.comparable
        assert drift.max_abs == pytest.approx(1.0)
        assert drift.top1_agreement == pytest.approx(0.5)
        reference = torch.cat([logits.flatten(), features.flatten()]).double()
        ours = torch.cat([changed.flatten(), features.flatten()]).double()
        assert drift.cosine == pytest.approx(float(torch.nn.functional.cosine_similarity(ours, reference, dim=0)), abs=1e-12)


def test_drift_tolerance_messages():
    reference = torch.tensor([[10.0, -10.0]])
    within = compare_outputs(reference + 1e-4, reference)
    assert drift_exceeds(within, atol=1e-5, rtol=1e-4) is None  # allowed 1e-5 + 1e-4 * 10
    beyond = compare_outputs(reference + 0.1, reference)
    message = drift_exceeds(beyond, atol=1e-5, rtol=1e-4)
    assert message is not None and "max |Δ| = 0.1" in message and "atol 1e-05" in message
    nan = compare_outputs(torch.tensor([[float("nan"), 0.0]]), reference)
    assert "not finite" in drift_exceeds(nan, atol=1.0, rtol=1.0)
    reshaped = compare_outputs(torch.zeros(1, 3), reference)
    assert not reshaped.comparable
    assert "changed shape" in drift_exceeds(reshaped, atol=1.0, rtol=1.0)


def test_a_tolerance_holds_every_bound_it_sets():
    from pydantic import ValidationError

    from optkit.measure.drift import tolerance_failure
    from optkit.passes import Tolerance
    from optkit.results import Similarity

    reference = torch.tensor([[3.0, 1.0], [1.0, 3.0], [2.0, 0.0], [0.0, 2.0]])
    flipped = reference.clone()
    flipped[0] = torch.tensor([1.0, 3.0])  # one sample of four changes its top-1
    drift = compare_outputs(flipped, reference)
    cosine = float(torch.nn.functional.cosine_similarity(flipped.flatten().double(), reference.flatten().double(), dim=0))
    assert drift.top1_agreement == 0.75 and drift.cosine == pytest.approx(cosine, abs=1e-12)

    assert tolerance_failure(drift, Tolerance.similarity(cosine=cosine - 1e-9, top1_agreement=0.75)) is None
    assert tolerance_failure(drift, Tolerance.similarity(top1_agreement=0.8)) == (
        "on the seeded batch, top-1 agreement with the stage before is 0.75, under the minimum 0.8"
    )
    assert tolerance_failure(drift, Tolerance.similarity(cosine=0.99)) == (
        f"on the seeded batch, the outputs' cosine similarity to the stage before is {cosine:.6f}, under the minimum 0.99"
    )
    # The element-wise bound is checked first, and still on the seeded batch.
    assert tolerance_failure(drift, Tolerance(atol=1.0, rtol=0.0, cosine=0.0)).startswith("outputs drifted by max |Δ| = 2")
    # Similarity on data, when given, instead of the seeded batch.
    on_data = Similarity(top1=0.5, cosine=0.999, n=360)
    assert tolerance_failure(drift, Tolerance.similarity(top1_agreement=0.6), on_data) == (
        "on data.eval, top-1 agreement with the stage before is 0.5, under the minimum 0.6"
    )
    assert tolerance_failure(drift, Tolerance.similarity(cosine=0.99), on_data) is None
    # Outputs without classes cannot be held to top-1 agreement; NaN falls short of any cosine.
    maps = compare_outputs(torch.ones(1, 2, 4, 4), torch.ones(1, 2, 4, 4))
    assert "not [batch, classes] logits" in tolerance_failure(maps, Tolerance.similarity(top1_agreement=0.5))
    nan = compare_outputs(torch.full((1, 2), float("nan")), reference[:1])
    assert "cosine similarity to the stage before is nan" in tolerance_failure(nan, Tolerance.similarity(cosine=0.0))

    assert Tolerance().describe() == "max|Δ| <= atol 0.0001 + rtol 0.0001 × max|reference|"
    with pytest.raises(ValidationError, match="give atol and rtol together"):
        Tolerance(atol=None, cosine=0.9)
    with pytest.raises(ValidationError, match="a tolerance needs a bound"):
        Tolerance.similarity()


def test_onnx_size_includes_external_data(tmp_path):
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from optkit.measure.size import file_bytes

    weight = numpy_helper.from_array(np.ones((64, 64), dtype=np.float32), name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [weight],
    )
    path = tmp_path / "model.onnx"
    onnx.save_model(helper.make_model(graph), str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    data = tmp_path / "model.onnx.data"
    assert data.stat().st_size >= 64 * 64 * 4
    assert file_bytes(path) == path.stat().st_size + data.stat().st_size


def test_drift_is_held_per_output_each_to_its_own_magnitude():
    from optkit.models.rules import ChannelGroup

    reference = (torch.full((1, 4), 480.0), {"scores": torch.full((1, 80), 1e-4)})
    broken = (reference[0].clone(), {"scores": reference[1]["scores"] + 0.01})  # 100x the scores' size
    drift = compare_outputs(broken, reference)
    assert [row.name for row in drift.outputs] == ["output_0", "output_1.scores"]
    assert drift.max_abs == pytest.approx(0.01) and drift.outputs[0].max_abs == 0.0
    assert drift.max_abs <= 1e-4 + 1e-4 * drift.reference_max_abs  # one tolerance for all: passed
    message = drift_exceeds(drift, atol=1e-4, rtol=1e-4)
    assert message is not None and message.startswith("output output_1.scores drifted by max |Δ| = 0.01")
    # Channel groups of one tensor: boxes (pixels) and scores get their own tolerance too.
    pred = torch.cat([torch.full((1, 4, 10), 480.0), torch.full((1, 80, 10), 1e-4)], 1)
    bad = pred.clone()
    bad[:, 4:] += 0.01
    groups = {"output": [ChannelGroup("boxes", 1, 0, 4), ChannelGroup("scores", 1, 4, 84)]}
    drift = compare_outputs(bad, pred, groups=groups)
    assert [g.group for g in drift.outputs[0].groups] == ["boxes", "scores"]
    assert drift_exceeds(compare_outputs(bad, pred), atol=1e-4, rtol=1e-4) is None  # whole tensor: 0.048 allowed
    assert drift_exceeds(drift, atol=1e-4, rtol=1e-4).startswith("output output (scores) drifted")
    assert drift_exceeds(compare_outputs(pred, pred, groups=groups), atol=0.0, rtol=0.0) is None
