"""Models and checkpoints that used to be measured or loaded wrongly (issue 12): every figure is
checked against a count done by hand."""

from __future__ import annotations

import json
import struct
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from optkit.config.pipeline import WeightsSpec
from optkit.errors import CheckpointError, StageError
from optkit.measure.flops import count_macs, profile_macs
from optkit.measure.params import count_params
from optkit.measure.stage import measure
from optkit.models.checkpoint_files import read_checkpoint, sniff_format
from optkit.models.weights import load_weights_into
from optkit.testing import run_pass

# --- checkpoint files --------------------------------------------------------------------------------


def _safetensors_with_first_byte(path: Path, first: int) -> dict[str, torch.Tensor]:
    """A valid safetensors file whose header length starts with byte ``first`` (padded by metadata)."""
    from safetensors.torch import save_file

    tensors = {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    for pad in range(400):
        save_file(tensors, path, metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == first:
            return tensors
    raise AssertionError(f"no padding gives a header length starting with {first:#x}")


def test_safetensors_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    path = tmp_path / "weights.safetensors"
    tensors = _safetensors_with_first_byte(path, 0x80)
    assert path.read_bytes()[:1] == b"\x80"  # what a pickle starts with

    assert sniff_format(path) == "safetensors"
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "safetensors"
    torch.testing.assert_close(checkpoint.obj["weight"], tensors["weight"], rtol=0, atol=0)


def test_a_pickle_is_still_a_torch_checkpoint(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80" and sniff_format(path) == "torch"


def _corrupt_first_tensor(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        entry = next(i for i in archive.infolist() if "/data/" in i.filename)
    data = bytearray(path.read_bytes())
    (name_length, extra_length) = struct.unpack("<HH", data[entry.header_offset + 26: entry.header_offset + 30])
    start = entry.header_offset + 30 + name_length + extra_length
    data[start + 4] ^= 0xFF  # one byte of the tensor's storage
    path.write_bytes(bytes(data))


def test_a_zip_checkpoint_with_corrupted_tensor_bytes_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, path)
    _corrupt_first_tensor(path)

    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    assert str(caught.value) == (
        f"model.weights: {path}: corrupted: the bytes of model/data/0 do not match their checksum "
        "(a damaged download or disk?); get the file again"
    )


def test_an_intact_zip_checkpoint_loads(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, path)
    torch.testing.assert_close(read_checkpoint(path).obj["w"], torch.arange(64, dtype=torch.float32), rtol=0, atol=0)


# --- state dicts: _metadata and old BatchNorm ---------------------------------------------------------


def _old_batchnorm_checkpoint(prefix: str, version: int) -> tuple[nn.Module, OrderedDict]:
    """A conv-BN model's state dict as saved before BatchNorm had num_batches_tracked (version 1)."""
    torch.manual_seed(0)
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        source[1].running_mean.uniform_()
    state = source.state_dict()
    del state["1.num_batches_tracked"]
    state._metadata["1"]["version"] = version
    saved = OrderedDict((prefix + k, v) for k, v in state.items())
    saved._metadata = OrderedDict([("", {"version": 1})] + [(f"{prefix}{k}".rstrip(".") if prefix else k, v) for k, v in state._metadata.items()])
    return source, saved


@pytest.mark.parametrize("prefix", ["module.", ""], ids=["DataParallel", "plain"])
def test_old_batchnorm_checkpoints_load_under_strict_with_their_metadata(tmp_path, prefix):
    source, saved = _old_batchnorm_checkpoint(prefix, version=1)
    torch.save(saved, tmp_path / "old.pt")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))

    account = load_weights_into(model, WeightsSpec(path="old.pt", strict=True), tmp_path)

    assert account["tensors"]["missing"] == 0 and account["tensors"]["bn_counters_reset"] == 1
    assert account.get("prefixes_stripped", []) == ([prefix] if prefix else [])
    torch.testing.assert_close(model[1].running_mean, source[1].running_mean, rtol=0, atol=0)


def test_a_current_batchnorm_checkpoint_lacking_its_counter_is_still_missing_under_strict(tmp_path):
    _, saved = _old_batchnorm_checkpoint("module.", version=2)
    torch.save(saved, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=r"strict is set but not every tensor was paired: 6 loaded, 1 missing \(e.g. 1.num_batches_tracked\)"):
        load_weights_into(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), WeightsSpec(path="new.pt", strict=True), tmp_path)


# --- partial loads are said on the console and in report.md --------------------------------------------


def test_a_partial_load_is_named_on_the_console_and_readable_in_report_md(cli, tmp_path, monkeypatch):
    import plugins_for_tests

    state = plugins_for_tests.tiny_net().state_dict()
    keep = ["0.weight", "0.bias", "1.weight", "1.bias", "5.weight"]  # 5 of the model's 9 tensors
    torch.save({k: state[k] for k in keep}, tmp_path / "partial.pt")
    (tmp_path / "p.yaml").write_text(
        "model:\n  source: python:plugins_for_tests:tiny_net\n  input_shape: [1, 3, 16, 16]\n"
        "  weights: {path: partial.pt}\ndevice: cpu\nmeasure: {latency: false}\noutput: out\n"
    )
    monkeypatch.chdir(tmp_path)
    result = cli("run", "p.yaml")

    assert result.exit_code == 0
    line = "partial.pt: 5 of 9 tensors loaded (56%); 4 missing"
    assert f"weights partly loaded: {line}" in " ".join(result.stderr.split())
    assert f"- weights: {line}\n" in (tmp_path / "out/report.md").read_text()
    assert json.loads((tmp_path / "out/report.json").read_text())["stages"][0]["details"]["weights"]["tensors"]["missing"] == 4


# --- MACs ---------------------------------------------------------------------------------------------


class OwnTotalOps(nn.Module):
    """A model that keeps counters named like thop's (its own attribute and a buffer in a layer)."""

    def __init__(self):
        super().__init__()
        self.total_ops = 0
        self.fc = nn.Linear(8, 4)
        self.fc.register_buffer("total_params", torch.zeros(1))

    def forward(self, x):
        return self.fc(x)


def test_a_model_with_its_own_total_ops_is_counted_and_left_as_it_was():
    model = OwnTotalOps()
    profile = profile_macs(model, torch.zeros(2, 8))
    assert profile.macs == 2 * 8 * 4
    assert model.total_ops == 0 and list(dict(model.fc.named_buffers())) == ["total_params"]


class SharedHead(nn.Module):
    """One Linear registered under two parents: ``fc`` and ``head.0``."""

    def __init__(self, calls: str):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.head = nn.Sequential(self.fc)
        self.calls = calls

    def forward(self, x):
        if self.calls == "head":
            return self.head(x)
        if self.calls == "fc":
            return self.fc(x)
        return self.fc(x) + self.head(x)


@pytest.mark.parametrize(("calls", "runs"), [("head", 1), ("fc", 1), ("both", 2)])
def test_a_module_under_two_parents_is_counted_once_per_call(calls, runs):
    profile = profile_macs(SharedHead(calls), torch.zeros(2, 8))
    assert profile.macs == runs * 2 * 8 * 4
    assert profile.functional_macs == 0
    assert profile.per_module == {"fc": {"type": "Linear", "macs": runs * 64, "counted_by": "thop"}}


class RefusesMeta(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if x.is_meta:
            raise ValueError("this model runs on real tensors only")
        return self.fc(x)


def test_a_forward_that_refuses_the_meta_device_is_counted_on_a_copy():
    profile = profile_macs(RefusesMeta(), torch.zeros(3, 8))
    assert profile.probe == "copy" and profile.macs == 3 * 8 * 4


class FailsAlways(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if not torch.is_inference_mode_enabled():  # measured outputs run in inference mode, counting does not
            raise ValueError("needs inference mode")
        return self.fc(x)


def test_a_failing_mac_count_says_so_and_how_to_skip_it():
    from optkit.config.pipeline import MeasureSpec

    with pytest.raises(StageError) as caught:
        measure(FailsAlways(), torch.zeros(1, 8), MeasureSpec(latency=False), torch.device("cpu"))
    assert str(caught.value) == (
        "counting MACs (on a copy of the model) failed: ValueError: needs inference mode; "
        "measure.flops: false skips the count"
    )
    assert measure(FailsAlways(), torch.zeros(1, 8), MeasureSpec(latency=False, flops=False), torch.device("cpu")).metrics.params == 36


def test_quantized_linear_is_counted():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao quantization is deprecated in favour of torchao
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    metrics = count_macs(quantized, torch.zeros(2, 16))
    assert metrics["macs"] == 2 * (16 * 8 + 8 * 4) == count_macs(model, torch.zeros(2, 16))["macs"]


class Opaque(nn.Module):
    """Holds its weights in a child module that never runs (as quantized layers do) and computes
    with an op the counters do not know."""

    def __init__(self):
        super().__init__()
        self.params = nn.ParameterList([nn.Parameter(torch.ones(8))])

    def forward(self, x):
        return torch.cumprod(x * self.params[0], dim=-1)


def test_a_module_whose_children_never_run_is_listed_as_uncounted():
    metrics = count_macs(nn.Sequential(nn.Linear(8, 8), Opaque()), torch.zeros(2, 8))
    assert metrics["macs"] == 2 * 8 * 8
    assert metrics["uncounted"] == {f"{Opaque.__module__}.Opaque": 1}


# --- models pruned with torch.nn.utils.prune and not finalised --------------------------------------------


def pruned_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    prune.l1_unstructured(model[4], "weight", amount=0.5)
    return model


def expected_pruned_counts() -> tuple[int, int]:
    model = pruned_net()
    total = sum(p.numel() for p in model.parameters())
    zeros = int((model[0].weight == 0).sum() + (model[4].weight == 0).sum())
    return total, total - zeros


def test_params_of_a_pruned_model_count_its_masked_weights():
    total, nonzero = expected_pruned_counts()
    counts = count_params(pruned_net())
    assert counts["params"] == total and counts["nonzero_params"] == nonzero
    assert counts["sparsity"] == pytest.approx(1 - nonzero / total, abs=1e-12)
    assert counts["sparsity"] > 0.45  # 432 of 3 x 3 x 3 x 16 and 80 of 16 x 10 zeroed, biases kept


def test_a_pruned_model_is_counted_and_copied_for_macs():
    profile = profile_macs(pruned_net(), torch.zeros(1, 3, 8, 8))
    assert profile.macs == 16 * 6 * 6 * 27 + 16 * 10


@pytest.mark.parametrize("flops", [True, False])
def test_a_pruned_model_runs_through_a_pipeline_with_its_true_sparsity(tmp_path, flops):
    total, nonzero = expected_pruned_counts()
    run = run_pass("fuse_bn", tmp_path=tmp_path, source="python:test_hostile_models:pruned_net",
                   input_shape=(1, 3, 8, 8), measure={"warmup": 0, "iters": 1, "flops": flops})
    baseline = run.baseline
    assert baseline["details"]["pruning_made_permanent"] == ["0.weight", "4.weight"]
    assert baseline["metrics"]["params"] == total and baseline["metrics"]["nonzero_params"] == nonzero
    if flops:
        assert baseline["metrics"]["macs"] == 16 * 6 * 6 * 27 + 16 * 10
    model = run.load_model()
    assert not hasattr(model[0], "weight_orig") and int((model[0].weight == 0).sum()) == 216


# --- reclassify -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "source", "error"),
    [
        ({"num_classes": 3, "layer": "nope"}, "python:optkit.testing:tiny_convnet", "Sequential has no layer 'nope'"),
        ({"num_classes": 3}, "python:test_hostile_models:no_classifier", "no classifier"),
        ({"keep": [50]}, "python:optkit.testing:tiny_convnet", "option keep: class index 50 is out of range"),
    ],
    ids=["unknown layer", "no classifier", "keep out of range"],
)
def test_reclassify_failures_are_stage_failures_mid_run(tmp_path, options, source, error):
    run = run_pass("reclassify", options, tmp_path=tmp_path, source=source, before=["fuse_bn"], expect_status="failed")
    assert [s["status"] for s in run.report["stages"]] == ["ok", "ok", "failed"]
    assert run.report["error"].startswith("stage 2 (reclassify) failed: ") and error in run.report["error"]
    assert "nothing was run" not in run.report["error"]


def no_classifier() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


def test_reclassify_seeds_only_the_cpu_generator_and_restores_it(tmp_path, monkeypatch):
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append(seed))
    state = torch.random.get_rng_state()

    first = run_pass("reclassify", {"num_classes": 5, "seed": 3}, tmp_path=tmp_path).load_model()
    second = run_pass("reclassify", {"num_classes": 5, "seed": 3}, tmp_path=tmp_path).load_model()
    other = run_pass("reclassify", {"num_classes": 5, "seed": 4}, tmp_path=tmp_path).load_model()

    assert reseeded == []
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(first[-1].weight, second[-1].weight, rtol=0, atol=0)
    assert not torch.equal(first[-1].weight, other[-1].weight)


def test_a_torch_checkpoint_named_safetensors_is_read_by_its_first_bytes(tmp_path):
    """README: the format comes from the first bytes, not the name (issue 25, item 10)."""
    from optkit.models.checkpoint_files import read_checkpoint

    torch.save({"w": torch.arange(3.0)}, tmp_path / "misnamed.safetensors")
    loaded = read_checkpoint(tmp_path / "misnamed.safetensors")
    assert loaded.format == "torch"
    torch.testing.assert_close(loaded.obj["w"], torch.arange(3.0), rtol=0, atol=0)
