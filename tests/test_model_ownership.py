"""One ownership rule for models: the runner hands a pass the model, which the pass may change;
passes do not copy it defensively; the runner copies only what it keeps (the baseline for
``ctx.baseline_model`` and the side-by-side timing), and the baseline stays intact."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from optkit import Pass, PassContext, hookimpl
from optkit.config.pipeline import parse_pipeline
from optkit.host.facade import Host
from optkit.run.runner import run_pipeline

PIPELINE = """\
model:
  source: python:plugins_for_tests:tiny_net
  input_shape: [2, 3, 32, 32]
device: cpu
measure: {{latency: false, flops: false}}
data:
  train: {{source: "python:plugins_for_tests:labeled_noise", kwargs: {{size: 32}}, batch_size: 10}}
passes:
{passes}
save_model: false
"""


class Spy(Pass):
    """Records the model object it is handed, its parameters' storage and values; returns it unchanged.

    With ``needs_baseline_model``, also what ``ctx.baseline_model`` holds.
    """

    name = "spy"
    summary = "Record the model handed to the stage."
    preserves_outputs = True
    needs_baseline_model = True
    seen: ClassVar[list[dict]] = []

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        baseline = ctx.baseline_model
        Spy.seen.append({
            "model": model,
            "pointers": {name: p.data_ptr() for name, p in model.named_parameters()},
            "state": {k: v.clone() for k, v in model.state_dict().items()},
            "baseline": baseline,
            "baseline_state": None if baseline is None else {k: v.clone() for k, v in baseline.state_dict().items()},
        })
        return model


class _Plugin:
    @hookimpl
    def optkit_register_passes(self, register):
        register(Spy)


def _run(tmp_path, passes: list[str]):
    Spy.seen.clear()
    host = Host.with_plugins(_Plugin())
    text = PIPELINE.format(passes="\n".join(f"  - {p}" for p in passes))
    report, _ = run_pipeline(parse_pipeline(text, host.get_pass), host, output=tmp_path / "run")
    assert report.status == "ok", report.error
    return Spy.seen


def test_in_place_passes_get_the_model_itself_and_change_it(tmp_path):
    """prune_l1 (unstructured), reclassify and finetune change the model they are handed: the next
    stage gets that very object, not a copy, and the baseline the runner kept is the original."""
    seen = _run(tmp_path, ["spy", "prune_l1: {amount: 0.5}", "spy", "reclassify: {num_classes: 10}", "spy",
                           "finetune: {max_steps: 1, teacher: none, evaluate: false}", "spy"])
    first, pruned, reclassified, tuned = seen
    assert pruned["model"] is first["model"] and reclassified["model"] is first["model"] and tuned["model"] is first["model"]
    # prune_l1 zeroed half of the selected weights of that same model ...
    weights = [name for name in first["state"] if first["state"][name].dim() == 4]  # the convolution
    zeros = sum(int((pruned["state"][name] == 0).sum()) for name in weights)
    assert zeros >= 0.4 * sum(first["state"][name].numel() for name in weights)
    # ... and finetune trained it in place: the parameters changed, their storage did not.
    assert tuned["pointers"] == reclassified["pointers"]
    assert any(not torch.equal(tuned["state"][k], reclassified["state"][k]) for k in reclassified["state"])


def test_the_baseline_stays_intact_after_passes_change_the_model(tmp_path):
    seen = _run(tmp_path, ["spy", "prune_l1: {amount: 0.5}", "spy"])
    first, after = seen
    original = first["state"]
    baseline = after["baseline"]
    assert baseline is not None and baseline is not after["model"]
    for key, value in original.items():
        torch.testing.assert_close(after["baseline_state"][key], value, rtol=0, atol=0)
    assert all(p.data_ptr() not in first["pointers"].values() for p in baseline.parameters())  # a copy the runner keeps
    assert any(not torch.equal(after["state"][k], original[k]) for k in original)  # while the model itself was pruned


def test_export_onnx_reads_the_model_and_leaves_it_as_it_got_it(tmp_path):
    """A pass that returns an artifact leaves its model as it was (the run carries it on), without copying it."""
    seen = _run(tmp_path, ["spy", "export_onnx: {verify_batch_sizes: [1]}", "spy"])
    before, after = seen
    assert after["model"] is before["model"] and after["pointers"] == before["pointers"]
    for key, value in before["state"].items():
        torch.testing.assert_close(after["state"][key], value, rtol=0, atol=0)
