"""The ``prune_channels`` pass: criteria, allocation, targets, steps, warnings, channels_last, and the
``optkit_register_importances`` hook (through the testing kit, as a plugin author would)."""

from __future__ import annotations

import logging
import re
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from optkit import PassContext, PassData, hookimpl
from optkit.errors import StageError
from optkit.measure.flops import count_macs
from optkit.models.importance import GroupTensor, PruningGroup
from optkit.testing import raises_user_error, run_pass, tiny_convnet
from optkit_plugins.prune_channels import PruneChannels
from optkit_plugins.prune_channels.criteria import l2, normalized
from optkit_plugins.prune_l1 import prune_channels

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def apply(model: nn.Module, data: PassData | None = None, **options):
    ctx = PassContext(torch.device("cpu"), X, None, logging.getLogger("test.prune_channels"), data=data)  # type: ignore[arg-type]
    pruned = PruneChannels(options).apply(model, ctx)
    return pruned, ctx.details


def kept_rows(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Which rows of ``before`` the pruned ``after`` kept (rows are unique in a seeded model)."""
    return [int((before - row).flatten(1).abs().sum(1).argmin()) for row in after]


def test_bn_scale_keeps_the_channels_with_the_largest_batchnorm_scales():
    model = tiny_convnet()
    gammas = torch.linspace(0.1, 1.6, 16)[torch.randperm(16, generator=torch.Generator().manual_seed(1))]
    model[1].weight.data.copy_(gammas)
    pruned, details = apply(model, importance="bn_scale", amount=0.5)
    assert sorted(kept_rows(model[0].weight, pruned[0].weight)) == sorted(gammas.topk(8).indices.tolist())
    assert details["importance"] == "bn_scale" and details["allocation"] == "uniform"


def test_l2_scores_sum_squares_over_each_channel_of_every_coupled_weight():
    t_out = GroupTensor("a.weight", "a", "output", torch.tensor([[1.0, 2.0], [3.0, 0.0]]), 0, ((0,), (1,)))
    t_in = GroupTensor("b.weight", "b", "input", torch.tensor([[1.0, 1.0], [0.0, 2.0]]), 1, ((0,), (1,)))
    group = PruningGroup("a", 2, {}, (t_out, t_in), reduction="sum")
    torch.testing.assert_close(l2(group), torch.tensor([5.0 + 1.0, 9.0 + 5.0]))
    mean = PruningGroup("a", 2, {}, (t_out, t_in), reduction="mean")
    torch.testing.assert_close(l2(mean), torch.tensor([3.0, 7.0]))
    torch.testing.assert_close(normalized(torch.tensor([1.0, 3.0])), torch.tensor([0.5, 1.5]))


def test_global_allocation_keeps_the_floor_of_every_group():
    model = tiny_convnet()
    model[1].weight.data.fill_(1.0)
    model[1].weight.data[:2] = 100.0  # two dominant channels: normalised, the other 14 look weak
    pruned, details = apply(model, importance="bn_scale", allocation="global", amount=0.6, floor=0.25)
    widths = {name: after for name, (_, after) in details["channels"].items()}
    assert widths["0"] >= 4 and widths["3"] >= 8  # ceil(16 * 0.25), ceil(32 * 0.25)
    assert set(kept_rows(model[0].weight, pruned[0].weight)) >= {0, 1}
    assert details["floor"] == 0.25


@pytest.mark.parametrize("metric, goal", [("macs", 0.4), ("params", 0.5)])
def test_a_target_is_reached_by_searching_the_amount(metric, goal):
    model = tiny_convnet()
    pruned, details = apply(model, importance="l2", target={metric: goal})
    if metric == "macs":
        reached = count_macs(pruned, X)["macs"] / count_macs(model, X)["macs"]
    else:
        reached = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters())
    assert details["target"]["reached"] == pytest.approx(reached, rel=1e-6)
    assert reached <= goal and reached > goal * 0.8
    assert "bisection" in details["target"]["found_by"]


def test_an_unreachable_target_fails_the_stage_and_says_why():
    with pytest.raises(StageError, match="target params: 0.01 not reached"):
        apply(tiny_convnet(), target={"params": 0.01})


@pytest.mark.parametrize(
    "target, match",
    [
        ({"latency": 0.5, "runtime": "tensorrt"}, r"option 'target.runtime': Input should be 'torch' or 'onnxruntime', got 'tensorrt'"),
        ({"macs": 0.5, "runtime": "onnxruntime"}, r"option 'target': .*runtime applies to a latency target only"),
    ],
)
def test_a_latency_runtime_is_validated_with_the_option_named(tmp_path, target, match):
    with raises_user_error(match):
        run_pass("prune_channels", {"target": target}, tmp_path=tmp_path)


def test_a_latency_target_on_onnxruntime_times_exports_side_by_side_and_reports_the_trail():
    """The mechanism, not the speed: an unreachable goal costs three exports (the model before, the
    largest amount, the final model) and fails the stage with the reached ratio and its interval."""
    ctx = PassContext(torch.device("cpu"), X, None, logging.getLogger("test.prune_channels"))  # type: ignore[arg-type]
    stage = PruneChannels({"importance": "l2", "target": {"latency": 0.001, "runtime": "onnxruntime"}})
    with pytest.raises(StageError, match=r"target latency: 0.001 not reached: .* keeps [0-9.]+ \[[0-9.]+-[0-9.]+\] of the latency"):
        stage.apply(tiny_convnet(), ctx)
    target = ctx.details["target"]
    assert target["runtime"] == "onnxruntime" and target["exports"]["count"] == 3
    tried = ctx.details["steps"][0]["tried"]
    assert len(tried) == 1 and tried[0][0] == 0.99 and len(tried[0]) == 4  # amount, ratio, low, high: the largest amount only
    assert ctx.details["steps"][0]["tried_columns"] == ["amount", "ratio", "low", "high"]
    assert target["trail"] == [tried]
    low, high = target["interval"]
    assert 0 < low <= target["reached"] <= high
    timing = target["timing"]
    assert timing["rounds"] == 30 and timing["baseline_ms"] > 0 and timing["pruned_ms"] > 0
    assert timing["ratio"] == target["reached"] and "side by side" in timing["order"]


@pytest.mark.slow
def test_a_latency_target_on_onnxruntime_is_searched_by_bisection_on_real_exports():
    ctx = PassContext(torch.device("cpu"), X, None, logging.getLogger("test.prune_channels"))  # type: ignore[arg-type]
    PruneChannels({"importance": "l2", "target": {"latency": 0.9, "runtime": "onnxruntime", "tolerance": 0.9}}).apply(tiny_convnet(), ctx)
    tried = ctx.details["steps"][0]["tried"]
    assert len(tried) == 8  # the largest amount, then 7 halvings
    amounts = [row[0] for row in tried]
    assert ctx.details["steps"][0]["amount"] == min(a for a, ratio, _, _ in tried if ratio <= 0.9) and max(amounts) == 0.99
    assert ctx.details["target"]["exports"]["count"] == 1 + 8 + 1


def test_steps_reach_the_amount_in_several_cuts():
    pruned, details = apply(tiny_convnet(), importance="l1", amount=0.75, steps=2)
    assert len(details["steps"]) == 2
    assert details["channels"]["0"] == [16, 4]  # 16 -> 8 -> 4: half of what is left, twice
    assert pruned(X).shape == (2, 10)


def test_taylor_without_data_names_the_data_to_add():
    with pytest.raises(StageError, match="data.calibration"):
        apply(tiny_convnet(), importance="taylor", amount=0.5)


def test_taylor_reads_gradients_of_the_calibration_batches():
    batches = [(X, torch.tensor([1, 2]))]
    pruned, details = apply(tiny_convnet(), PassData(calibration=batches), importance="taylor", amount=0.5)
    assert details["channels"]["0"] == [16, 8]


def test_an_unknown_criterion_lists_the_known_ones():
    with pytest.raises(StageError, match="unknown criterion 'nope'; known: l1, l2, bn_scale, taylor, random"):
        apply(tiny_convnet(), importance="nope")


def test_amount_and_target_together_are_refused():
    with pytest.raises(ValueError, match="amount or target"):
        PruneChannels({"amount": 0.3, "target": {"macs": 0.5}})


def test_a_stage_that_removes_nothing_warns_in_the_console_and_details(caplog):
    with caplog.at_level(logging.WARNING):
        _, details = apply(tiny_convnet(), amount=0.1, round_to=32)  # every group keeps a multiple of 32: all of it
    assert "removes no channel" in details["warnings"][0]
    assert "removes no channel" in caplog.text


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_channels_last_models_prune_like_contiguous_ones(layout):
    model = tiny_convnet().to(memory_format=layout)
    result = prune_channels(model, X.to(memory_format=layout), 0.5, rules={})
    assert result.removed_channels() == 8 + 16 and result.backoffs == []
    conv = result.model[3].weight
    assert conv.shape == (16, 8, 3, 3) and conv.is_contiguous(memory_format=layout)
    assert result.model(X.to(memory_format=layout)).shape == (2, 10)


def output_first(group: PruningGroup) -> torch.Tensor:
    """A test criterion: the lower the channel's index in the producing layer, the more important."""
    producer = group.weights("output")[0]
    return -torch.tensor([float(positions[0]) for positions in producer.positions])


class IndexCriterionPlugin:
    @hookimpl
    def optkit_register_importances(self, register):
        register("index_first", output_first)


def test_hook_optkit_register_importances(tmp_path):
    run = run_pass("prune_channels", {"importance": "index_first", "amount": 0.5}, tmp_path=tmp_path, plugins=[IndexCriterionPlugin()])
    model = run.load_model()
    original = tiny_convnet()
    assert kept_rows(original[0].weight, model[0].weight) == list(range(8))
    assert run.stage["details"]["importance"] == "index_first"


def test_a_criterion_returning_the_wrong_shape_fails_the_stage(tmp_path):
    class Wrong:
        @hookimpl
        def optkit_register_importances(self, register):
            register("wrong", lambda group: torch.ones(3))

    run = run_pass("prune_channels", {"importance": "wrong"}, tmp_path=tmp_path, plugins=[Wrong()], expect_status="failed")
    assert "expected one score per channel" in run.stage["error"]


def test_the_plugin_guide_example_criterion_runs_in_a_pipeline(tmp_path):
    """docs/plugins/importance.md's complete example, executed as written, registered as a plugin."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "plugins" / "importance.md").read_text(encoding="utf-8")
    source = next(block for block in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "def scaled_l2" in block)
    module = types.ModuleType("scaled_l2_criteria")
    exec(compile(source, "docs/plugins/importance.md", "exec"), module.__dict__)
    run = run_pass("prune_channels", {"importance": "scaled_l2", "amount": 0.5}, tmp_path=tmp_path, plugins=[module])
    assert run.stage["details"]["importance"] == "scaled_l2"
    assert run.metrics["params"] < run.baseline["metrics"]["params"]
    original = tiny_convnet()
    gamma, rows = original[1].weight.detach().abs(), original[0].weight.detach().pow(2).flatten(1).sum(1).sqrt()
    expected = sorted((rows * gamma).topk(8).indices.tolist())
    assert sorted(kept_rows(original[0].weight, run.load_model()[0].weight)) == expected


def test_sensitivity_allocation_takes_more_from_the_group_whose_removal_costs_less():
    model = tiny_convnet()
    model[4].weight.data[:16].mul_(1e-3)  # half of the second layer's channels barely reach the output: cheap to remove
    pruned, details = apply(model, importance="l2", allocation="sensitivity", amount=0.4, floor=0.1)
    kept = {name: after / before for name, (before, after) in details["channels"].items()}
    assert kept["3"] <= 0.5 < kept["0"]  # uniform would keep 0.6 of each
    assert details["allocation"] == "sensitivity" and pruned(X).shape == (2, 10)


def test_two_plugins_registering_one_criterion_name_fail_only_where_it_is_used():
    from optkit.errors import PluginError
    from optkit.host.facade import Host

    class Other:
        @hookimpl
        def optkit_register_importances(self, register):
            register("index_first", l2)

    table = Host.with_plugins(IndexCriterionPlugin(), Other()).importance_table()
    with pytest.raises(PluginError, match="index_first"):
        table["index_first"](None)


def test_a_registration_that_is_not_a_criterion_marks_its_plugin_broken():
    from optkit.host.facade import Host

    class Broken:
        @hookimpl
        def optkit_register_importances(self, register):
            register("Not A Name", 3)

    host = Host.with_plugins(Broken())
    assert "index_first" not in host.importance_table()
    assert any("register(name, criterion)" in (record.error or "") for record in host.broken)
