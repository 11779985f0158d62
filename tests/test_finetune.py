"""The finetune pass: training by distillation on data.train, BatchNorm recalibration, freezing, the
baseline kept for teachers, progress reports, and every bad input named."""

from __future__ import annotations

import copy
import logging
import shutil
import traceback
from pathlib import Path

import plugins_for_tests
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from optkit import Pass, PassContext, hookimpl
from optkit.config.pipeline import load_pipeline
from optkit.data.loaders import DeviceLoader
from optkit.errors import PipelineError, StageError
from optkit.host.facade import Host
from optkit.passes import PassData
from optkit.run.runner import run_pipeline
from optkit.testing import DIGITS_MODEL, digits_cnn, run_pass
from optkit_plugins.finetune import FineTune
from optkit_plugins.finetune.loss import finetune_loss

DIGITS = {"source": DIGITS_MODEL, "model_kwargs": {"pretrained": True}, "input_shape": (1, 3, 32, 32), "measure": {"latency": False}}
PRUNE_HALF = {"prune_l1": {"mode": "channels", "amount": 0.5}}


def digits_data(digits, train: str | dict | None = None, train_limit: int = 256) -> dict:
    """data.eval: 120 val digits of every class (a seeded subset); data.train: the first train digits, shuffled."""
    return {
        "eval": {"source": f"imagefolder:{digits.val}", "limit": 120, "shuffle": True, "batch_size": 60},
        "train": train or {"source": f"imagefolder:{digits.train}", "limit": train_limit, "shuffle": True, "batch_size": 32},
    }


def finetune(tmp_path, digits, options, before=(), data=None, **kwargs):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return run_pass("finetune", options, tmp_path=tmp_path, before=before, data=data or digits_data(digits), **{**DIGITS, **kwargs})


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- training gives the accuracy back ---------------------------------------------------------------


def test_distillation_gives_back_the_accuracy_channel_pruning_took(tmp_path, digits):
    run = finetune(tmp_path, digits, {"max_steps": 48, "lr": 0.05}, before=[PRUNE_HALF])
    pruned, tuned = run.report["stages"][1]["metrics"], run.metrics
    details = run.stage["details"]

    assert pruned["accuracy"]["top1"] < 0.3  # half the channels gone, no training: near chance
    assert tuned["accuracy"]["top1"] >= 0.9  # 48 steps of 32 samples (6 epochs of 256 digits): 98% measured
    assert tuned["params"] == pruned["params"] and tuned["macs"] == pruned["macs"]  # still the small model
    assert details["teacher"] == "baseline" and details["steps"] == 48 and details["epochs"] == 6
    assert details["samples_seen"] == 48 * 32 and details["batch_size"] == 32
    assert [e["epoch"] for e in details["loss_curve"]] == [1, 2, 3, 4, 5, 6]
    assert details["loss_curve"][-1]["loss"] < details["loss_curve"][0]["loss"]
    assert all({"distillation", "cross_entropy", "steps", "samples", "seconds"} <= set(e) for e in details["loss_curve"])
    assert details["accuracy_before"] == pruned["accuracy"]  # the pass's own evaluation is the runner's
    assert details["accuracy_after"] == tuned["accuracy"]
    assert details["seconds"] > 0 and details["samples_per_s"] > 0 and details["amp"] is None  # CPU: full precision


def test_the_trained_model_is_in_eval_mode_with_trained_batchnorm_statistics(tmp_path, digits):
    run = finetune(tmp_path, digits, {"max_steps": 4, "lr": 0.05})
    model, baseline = run.load_model(), digits_cnn(pretrained=True)

    assert not any(m.training for m in model.modules())
    bn, bn_before = model.features[0][1], baseline.features[0][1]
    assert bn.num_batches_tracked == bn_before.num_batches_tracked + 4  # one update per step, in train mode
    assert not torch.equal(bn.running_mean, bn_before.running_mean)


def test_training_is_deterministic_for_a_seed_on_cpu(tmp_path, digits):
    options = {"max_steps": 5, "lr": 0.05, "seed": 3}
    first = finetune(tmp_path / "a", digits, options, before=[PRUNE_HALF]).load_model()
    second = finetune(tmp_path / "b", digits, options, before=[PRUNE_HALF]).load_model()
    other = finetune(tmp_path / "c", digits, {**options, "seed": 4}, before=[PRUNE_HALF]).load_model()

    torch.testing.assert_close(weights(first), weights(second), rtol=0, atol=0)
    assert not torch.equal(first.fc.weight, other.fc.weight)  # the seed matters: the check above can fail


def test_max_steps_adamw_and_a_constant_schedule(tmp_path, digits):
    run = finetune(tmp_path, digits, {"max_steps": 10, "optimizer": "adamw", "lr": 1e-4, "schedule": "constant", "batch_size": 64})
    details = run.stage["details"]
    assert details["steps"] == 10 and details["epochs"] == 3  # 256 samples: 4 batches of 64 per epoch
    assert [e["steps"] for e in details["loss_curve"]] == [4, 4, 2]
    assert details["optimizer"] == {"name": "adamw", "lr": 1e-4, "schedule": "constant", "weight_decay": 0.0005}
    assert run.metrics["accuracy"]["top1"] >= run.baseline["metrics"]["accuracy"]["top1"] - 0.05  # a trained model stays trained


def test_teacher_previous_and_none(tmp_path, digits):
    previous = finetune(tmp_path, digits, {"max_steps": 3, "teacher": "previous"})
    assert previous.stage["details"]["teacher"] == "previous"
    assert "distillation" in previous.stage["details"]["loss_curve"][0]

    labels_only = finetune(tmp_path, digits, {"max_steps": 3, "teacher": "none"})
    curve = labels_only.stage["details"]["loss_curve"][0]
    assert labels_only.stage["details"]["teacher"] == "none" and labels_only.stage["details"]["distillation"] is None
    assert "distillation" not in curve and curve["loss"] == pytest.approx(curve["cross_entropy"], rel=1e-9)


def test_the_loss_mixes_distillation_and_labels_by_alpha():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 10, generator=generator), torch.randn(4, 10, generator=generator)
    labels = torch.tensor([1, -1, 3, -1])
    T = 2.0
    kd = (torch.softmax(teacher / T, 1) * (torch.log_softmax(teacher / T, 1) - torch.log_softmax(student / T, 1))).sum(1).mean() * T * T
    ce = torch.nn.functional.cross_entropy(student[[0, 2]], labels[[0, 2]])

    parts = finetune_loss(student, teacher, labels, temperature=T, alpha=0.25)
    torch.testing.assert_close(parts.distillation, kd, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts.cross_entropy, ce, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts.total, 0.25 * kd + 0.75 * ce, rtol=1e-6, atol=1e-7)
    assert parts.labeled == 2
    unlabeled = finetune_loss(student, teacher, torch.full((4,), -1), temperature=T, alpha=0.25)
    torch.testing.assert_close(unlabeled.total, kd, rtol=1e-6, atol=1e-7)  # no label: distillation alone
    with pytest.raises(StageError, match="teacher: none trains on labels, but a batch of data.train has none"):
        finetune_loss(student, None, torch.full((4,), -1), temperature=T, alpha=0.25)


# --- unlabeled data ---------------------------------------------------------------------------------


def unlabeled_folder(digits, root: Path, count: int = 96) -> Path:
    """Train digits copied flat into one folder (no class folders: no labels), some in a sub-folder."""
    files = sorted(digits.train.rglob("*.png"))[::10][:count]  # every tenth: all classes
    for i, file in enumerate(files):
        target = root / ("more" if i % 2 else "") / file.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, target)
    return root


def test_an_unlabeled_image_folder_trains_by_distillation_alone(tmp_path, digits):
    folder = unlabeled_folder(digits, tmp_path / "unlabeled")
    run = finetune(tmp_path, digits, {"max_steps": 24, "lr": 0.05}, before=[PRUNE_HALF],
                   data=digits_data(digits, train={"source": f"images:{folder}", "batch_size": 32, "shuffle": True}))
    details = run.stage["details"]
    assert run.baseline["details"]["data"]["train"]["samples"] == 96
    assert "classes" not in run.baseline["details"]["data"]["train"]
    assert all("cross_entropy" not in epoch for epoch in details["loss_curve"])
    assert details["samples_seen"] == 24 * 32
    assert run.metrics["accuracy"]["top1"] > run.report["stages"][1]["metrics"]["accuracy"]["top1"] + 0.3  # 8% -> 57% measured


def test_teacher_none_on_unlabeled_data_says_what_to_use(tmp_path, digits):
    folder = unlabeled_folder(digits, tmp_path / "unlabeled", count=40)
    run = finetune(tmp_path, digits, {"max_steps": 2, "teacher": "none"}, expect_status="failed",
                   data=digits_data(digits, train=f"images:{folder}"))
    assert run.stage["error"] == (
        "stage 1 (finetune) failed: teacher: none trains on labels, but a batch of data.train has none (label -1); "
        "distil from a teacher instead (teacher: baseline or previous)"
    )


def test_an_images_source_names_a_folder_without_images(tmp_path, digits):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(PipelineError, match=r"^data.train: .*empty holds no images \(looked for .jpg, .jpeg, .png"):
        finetune(tmp_path, digits, {"max_steps": 1}, data=digits_data(digits, train=f"images:{tmp_path / 'empty'}"))
    with pytest.raises(PipelineError, match=r"^data.train: .*missing: no such folder \(from images:"):
        finetune(tmp_path, digits, {"max_steps": 1}, data=digits_data(digits, train=f"images:{tmp_path / 'missing'}"))


# --- a new head: reclassify, then train it alone ----------------------------------------------------


def test_reclassify_then_finetune_all_but_head_trains_the_new_head_only(tmp_path, digits):
    run = finetune(tmp_path, digits, {"max_steps": 16, "lr": 0.05, "freeze": "all_but_head"},
                   before=[{"reclassify": {"num_classes": 10, "seed": 1}}])
    model, baseline = run.load_model(), digits_cnn(pretrained=True)
    details = run.stage["details"]

    assert run.report["stages"][1]["metrics"]["accuracy"]["top1"] < 0.3  # a fresh head: guessing
    assert run.metrics["accuracy"]["top1"] >= 0.9  # the trained backbone's features, a trained head
    assert details["freeze"]["head"] == "fc" and details["trainable_params"] == 48 * 10 + 10
    backbone = {k: v for k, v in weights(model).items() if not k.startswith("fc.")}
    torch.testing.assert_close(backbone, {k: v for k, v in weights(baseline).items() if k in backbone}, rtol=0, atol=0)
    assert all(p.requires_grad for p in model.parameters())  # freeze held for the stage only


def test_auto_teacher_trains_a_head_of_other_classes_on_labels(tmp_path, digits):
    five = tmp_path / "five"
    for split in ("train", "val"):
        for digit in "01234":
            shutil.copytree(getattr(digits, split) / digit, five / split / digit)
    data = {"eval": {"source": f"imagefolder:{five / 'val'}", "batch_size": 60},
            "train": {"source": f"imagefolder:{five / 'train'}", "shuffle": True, "limit": 160, "batch_size": 32}}
    run = finetune(tmp_path, digits, {"max_steps": 10, "lr": 0.05, "freeze": "all_but_head"},
                   before=[{"reclassify": {"num_classes": 5}}], data=data, measure={"latency": False, "accuracy": False})
    details = run.stage["details"]
    assert details["teacher"] == "none"
    assert details["teacher_note"] == "auto: the baseline has 10 outputs and the model 5, so no distillation: labels only"
    assert details["accuracy_after"]["top1"] > 0.9 > details["accuracy_before"]["top1"]

    explicit = finetune(tmp_path, digits, {"max_steps": 1, "teacher": "baseline"}, before=[{"reclassify": {"num_classes": 5}}],
                        data=data, measure={"latency": False, "accuracy": False}, expect_status="failed")
    assert explicit.stage["error"] == (
        "stage 2 (finetune) failed: teacher: baseline has 10 outputs but the model has 5; distillation needs the same "
        "classes: use teacher: none (train on labels), e.g. for the new head of reclassify"
    )


def test_frozen_batchnorm_keeps_its_statistics(tmp_path, digits):
    run = finetune(tmp_path, digits, {"max_steps": 4, "freeze": ["features.0.*", "features.1.*"]})
    model, baseline = run.load_model(), digits_cnn(pretrained=True)
    torch.testing.assert_close(model.features[0][1].running_var, baseline.features[0][1].running_var, rtol=0, atol=0)
    assert not torch.equal(model.features[2][1].running_var, baseline.features[2][1].running_var)


def test_a_freeze_pattern_that_matches_nothing_is_named(tmp_path, digits):
    run = finetune(tmp_path, digits, {"max_steps": 1, "freeze": "backbone.*"}, expect_status="failed")
    assert run.stage["error"].startswith(
        "stage 1 (finetune) failed: finetune option freeze: 'backbone.*' matches no parameter (names look like features.0.0.weight"
    )


def test_freezing_everything_leaves_nothing_to_train(tmp_path, digits):
    run = finetune(tmp_path, digits, {"max_steps": 1, "freeze": "*"}, expect_status="failed")
    assert run.stage["error"] == (
        "stage 1 (finetune) failed: every parameter is frozen: nothing to train (check freeze, and reclassify's freeze)"
    )


# --- bn_recalibrate ---------------------------------------------------------------------------------


def test_bn_recalibrate_alone_changes_statistics_not_weights(tmp_path, digits):
    run = finetune(tmp_path, digits, {"epochs": 0, "bn_recalibrate": True, "bn_batches": 5}, before=[PRUNE_HALF])
    details = run.stage["details"]
    model, pruned_accuracy = run.load_model(), run.report["stages"][1]["metrics"]["accuracy"]["top1"]

    assert details["bn_recalibrate"] == {"layers": 9, "batches": 5, "samples": 160}
    assert details["steps"] == 0 and details["loss_curve"] == [] and details["samples_seen"] == 0
    assert run.metrics["accuracy"]["top1"] > pruned_accuracy + 0.15  # statistics of the channels that are left
    assert not any(m.training for m in model.modules())
    assert model.features[0][1].num_batches_tracked == 5  # update_bn's cumulative average over the 5 batches


def test_bn_recalibrate_without_batchnorm_says_why(tmp_path, digits):
    run = finetune(tmp_path, digits, {"epochs": 0, "bn_recalibrate": True}, before=["fuse_bn"], expect_status="failed")
    assert run.stage["error"] == (
        "stage 2 (finetune) failed: bn_recalibrate: the model has no BatchNorm layer to recalibrate (fuse_bn before it "
        "folds them away; put finetune before fuse_bn, or train with epochs)"
    )


def test_options_that_do_nothing_are_refused(tmp_path, digits):
    with pytest.raises(PipelineError, match=r"pipeline.yaml:\d+: stage 1 \(finetune\): option '\(top level\)': Value error, "
                       r"nothing to do: give epochs >= 1, max_steps, or bn_recalibrate: true"):
        finetune(tmp_path, digits, {"epochs": 0})


# --- bad data ---------------------------------------------------------------------------------------


def test_no_train_data_names_what_to_add(tmp_path, digits):
    run = run_pass("finetune", {"max_steps": 1}, tmp_path=tmp_path, data={"eval": f"imagefolder:{digits.val}"},
                   expect_status="failed", **DIGITS)
    assert run.stage["error"] == (
        "stage 1 (finetune) failed: this pass needs train data: add data.train to the pipeline, "
        "e.g. data: {train: {source: imagefolder:PATH}}"
    )
    bare = run_pass("finetune", {"max_steps": 1}, tmp_path=tmp_path, expect_status="failed", **DIGITS)
    assert bare.stage["error"].endswith("the pipeline has no data: section; add one, e.g. data: {train: {source: imagefolder:PATH}}")
    assert bare.report["stages"][0]["status"] == "ok"  # the baseline is kept


def test_train_classes_that_do_not_match_the_outputs_name_both_counts(tmp_path, digits):
    four = tmp_path / "four"
    for digit in "0123":
        shutil.copytree(digits.train / digit, four / digit)
    run = finetune(tmp_path, digits, {"max_steps": 1}, data=digits_data(digits, train=f"imagefolder:{four}"), expect_status="failed")
    assert run.stage["error"] == (
        "stage 1 (finetune) failed: data.train has 4 classes (0, 1, 2, 3), but the model has 10 outputs; labels are "
        "output indices, so train on a data set with one class per output, or give the model 4 outputs "
        "(reclassify: {num_classes: 4})"
    )


def test_labels_beyond_the_outputs_name_the_label_and_the_count(tmp_path):
    data = {"train": {"source": "python:plugins_for_tests:labeled_noise", "kwargs": {"classes": 13, "n": 26}, "batch_size": 26}}
    run = run_pass("finetune", {"max_steps": 1}, tmp_path=tmp_path, plugins=[plugins_for_tests], data=data,
                   source="python:plugins_for_tests:tiny_net", expect_status="failed")
    assert run.stage["error"] == (
        "stage 1 (finetune) failed: data.train has label 12, but the model has 10 outputs; labels are output indices, "
        "so the data set needs one class per output"
    )


def noise_context(tmp_path, n: int = 32) -> PassContext:
    generator = torch.Generator().manual_seed(0)
    samples = TensorDataset(torch.rand(n, 3, 64, 64, generator=generator), torch.arange(n) % 10)
    train = DeviceLoader(DataLoader(samples, batch_size=8), torch.device("cpu"))
    return PassContext(torch.device("cpu"), torch.rand(2, 3, 64, 64, generator=generator), tmp_path,
                       logging.getLogger("test"), stage_index=1, data=PassData(train=train))


def test_a_loss_that_is_not_finite_stops_at_its_step(tmp_path):
    """The model is the stage's to change (trained in place, no copy): a failed stage stops the run,
    whose earlier stages stay on disk (next test)."""
    model = plugins_for_tests.tiny_net().eval()
    before = weights(model)
    with pytest.raises(StageError) as failure:
        FineTune({"max_steps": 10, "lr": 1e30, "teacher": "none"}).apply(model, noise_context(tmp_path))
    assert str(failure.value) == (
        "the loss is nan at step 2 (epoch 1); training stopped there and the stage fails (the stages before it are kept); "
        "lower lr (now 1e+30) or check data.train"
    )
    assert any(not torch.equal(weights(model)[k], before[k]) for k in before)  # step 1 trained the model itself


def test_a_failed_stage_through_the_runner_keeps_the_stages_before(tmp_path):
    data = {"train": {"source": "python:plugins_for_tests:labeled_noise", "batch_size": 10}}
    run = run_pass("finetune", {"max_steps": 5, "lr": 1e30, "teacher": "none"}, tmp_path=tmp_path, plugins=[plugins_for_tests],
                   data=data, source="python:plugins_for_tests:tiny_net", before=["identity"], expect_status="failed")
    assert run.stage["error"].startswith("stage 2 (finetune) failed: the loss is nan at step 2 (epoch 1)")
    assert [s["status"] for s in run.report["stages"]] == ["ok", "ok", "failed"]
    assert not (run.run_dir / "model.pt").exists()


# --- the baseline the runner keeps ------------------------------------------------------------------


class BaselineWatch:
    """In-process passes: ``grow`` changes the model in place; ``reads_baseline`` and ``ignores_baseline``
    record what ``ctx.baseline_model`` was."""

    __name__ = "baseline-watch"
    seen: list[tuple[str, nn.Module | None, nn.Module]] = []

    class Grow(Pass):
        name = "grow"
        summary = "Add 1 to every weight, in place."

        def apply(self, model, ctx):
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter += 1
            BaselineWatch.seen.append((self.name, ctx.baseline_model, model))
            return model

    class ReadsBaseline(Pass):
        name = "reads_baseline"
        summary = "Record ctx.baseline_model."
        needs_baseline_model = True

        def apply(self, model, ctx):
            BaselineWatch.seen.append((self.name, ctx.baseline_model, model))
            return model

    @hookimpl
    def optkit_register_passes(self, register):
        register(self.Grow)
        register(self.ReadsBaseline)


def test_the_baseline_is_kept_only_for_passes_that_read_it(tmp_path):
    BaselineWatch.seen.clear()
    (tmp_path / "none").mkdir()
    (tmp_path / "kept").mkdir()
    run_pass("grow", tmp_path=tmp_path / "none", plugins=[BaselineWatch()], source="python:plugins_for_tests:tiny_net")
    assert BaselineWatch.seen[0][1] is None  # no pass reads it: no copy

    BaselineWatch.seen.clear()
    run_pass("grow", tmp_path=tmp_path / "kept", plugins=[BaselineWatch()], source="python:plugins_for_tests:tiny_net",
             before=["grow", "reads_baseline"])
    (_, first, model), (_, kept, current), (_, after_last_reader, _) = BaselineWatch.seen
    assert first is kept is not None and kept is not current  # one copy, from before the first stage
    torch.testing.assert_close(weights(kept), weights(plugins_for_tests.tiny_net()), rtol=0, atol=0)  # "grow" changed the model, not it
    assert not kept.training and not any(p.requires_grad for p in kept.parameters())
    assert after_last_reader is None  # released once no stage to come reads it


def test_finetune_declares_the_baseline_only_for_its_teacher():
    assert FineTune({"teacher": "baseline"}).needs_baseline_model and FineTune({"teacher": "auto"}).needs_baseline_model
    assert not FineTune({"teacher": "previous"}).needs_baseline_model and not FineTune({"teacher": "none"}).needs_baseline_model
    assert Pass.needs_baseline_model is False


# --- progress ---------------------------------------------------------------------------------------


class ProgressRecorder:
    __name__ = "progress-recorder"

    def __init__(self) -> None:
        self.events: list[tuple[str, int, str, int, int | None, dict]] = []

    @hookimpl
    def optkit_stage_progress(self, stage, index, progress, run):
        self.events.append((stage, index, progress.task, progress.completed, progress.total, dict(progress.fields)))


def test_hook_optkit_stage_progress(tmp_path, digits):
    recorder = ProgressRecorder()
    finetune(tmp_path, digits, {"max_steps": 3, "bn_recalibrate": True, "bn_batches": 2}, plugins=[recorder])
    train = [e for e in recorder.events if e[2] == "train"]
    assert [(e[0], e[1], e[3], e[4]) for e in train] == [("finetune", 1, 1, 3), ("finetune", 1, 2, 3), ("finetune", 1, 3, 3)]
    assert list(train[0][5]) == ["epoch", "loss", "samples/s"] and train[0][5]["epoch"] == "1/1"
    assert [(e[2], e[3], e[4]) for e in recorder.events if e[2] != "train"] == [("bn_recalibrate", 1, 2), ("bn_recalibrate", 2, 2)]


def test_the_cli_draws_a_progress_bar_and_keeps_quiet_under_json(tmp_path, digits, cli, write_pipeline):
    path = write_pipeline(f"""
        model: {{source: "{DIGITS_MODEL}", kwargs: {{pretrained: true}}, input_shape: [1, 3, 32, 32]}}
        device: cpu
        measure: {{latency: false, flops: false}}
        data:
          train: {{source: "imagefolder:{digits.train}", limit: 64, shuffle: true, batch_size: 32}}
        passes:
          - finetune: {{max_steps: 2}}
        output: {tmp_path / 'run'}
        """)
    shown = cli("run", path)
    assert shown.exit_code == 0, shown.output
    assert "[1/1] finetune · train" in shown.stderr and "2/2" in shown.stderr and "epoch 1/1 · loss " in shown.stderr
    quiet = cli("run", path, "--json", "--overwrite")
    assert quiet.exit_code == 0
    assert "finetune · train" not in quiet.stderr and "[1/1] finetune: ok" in quiet.stderr


@pytest.mark.slow
def test_the_example_pipeline_shrinks_the_model_and_gives_the_accuracy_back(tmp_path, digits, write_pipeline):
    """benchmarks/finetune_digits.py makes the claim (within 1 point, 3x fewer MACs); this checks it loosely."""
    document = yaml.safe_load((Path(__file__).resolve().parent.parent / "examples" / "digits_finetune.yaml").read_text())
    document["data"]["eval"]["source"] = f"imagefolder:{digits.val}"
    document["data"]["train"]["source"] = f"imagefolder:{digits.train}"
    document.update(device="cpu", measure={"latency": False}, output=str(tmp_path / "run"))
    document["passes"] = [p for p in document["passes"] if "export_onnx" not in p]
    host = Host()
    report, _ = run_pipeline(load_pipeline(write_pipeline(yaml.safe_dump(document)), host.get_pass), host)
    baseline, pruned, recalibrated, tuned = (stage.metrics for stage in report.stages)
    assert report.status == "ok"
    assert pruned.accuracy and recalibrated.accuracy and tuned.accuracy and baseline.accuracy
    assert pruned.accuracy.top1 < 0.2 < recalibrated.accuracy.top1
    assert tuned.accuracy.top1 >= baseline.accuracy.top1 - 0.02
    assert baseline.macs and tuned.macs and baseline.macs / tuned.macs >= 3.0


# --- CUDA -------------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_training_runs_on_the_stage_device_in_mixed_precision(tmp_path, digits, write_pipeline):
    path = write_pipeline(yaml.safe_dump({
        "model": {"source": DIGITS_MODEL, "kwargs": {"pretrained": True}, "input_shape": [1, 3, 32, 32]},
        "measure": {"latency": False}, "data": digits_data(digits),
        "passes": [PRUNE_HALF, {"finetune": {"max_steps": 24, "lr": 0.05}}], "output": str(tmp_path / "run"),
    }))
    report, _ = run_pipeline(load_pipeline(path, Host().get_pass), Host(), device="cuda")
    stage = report.stages[-1]
    assert stage.status == "ok", stage.error
    assert stage.details["amp"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert stage.metrics.accuracy.top1 >= 0.85
    assert report.environment.device != "cpu"


def test_interleaved_timing_and_the_teacher_share_one_copy_of_the_baseline(tmp_path, monkeypatch):
    """With side-by-side timing the runner already holds a copy of the baseline: passes that read
    it get that copy, so the baseline is copied once, not twice."""
    copies = []
    real_deepcopy = copy.deepcopy

    def counting_deepcopy(obj, *args, **kwargs):
        # full copies kept for the run; not MAC counting's passing copy, which goes to the meta device
        if isinstance(obj, nn.Module) and all(frame.name != "meta_copy" for frame in traceback.extract_stack()):
            copies.append(type(obj).__name__)
        return real_deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", counting_deepcopy)
    BaselineWatch.seen.clear()
    run = run_pass("reads_baseline", tmp_path=tmp_path, plugins=[BaselineWatch()], source="python:plugins_for_tests:tiny_net",
                   before=["grow"], measure={"warmup": 1, "iters": 3, "compare": "interleaved"})
    assert run.report["timing"]["compare"] == "interleaved"
    (_, kept, _), (_, read, current) = BaselineWatch.seen
    assert read is kept is not None and read is not current
    torch.testing.assert_close(weights(read), weights(plugins_for_tests.tiny_net()), rtol=0, atol=0)
    assert not read.training and not any(p.requires_grad for p in read.parameters())
    # the baseline once (for timing and the teacher alike) and grow's product once; the last stage is timed as it is
    assert len(copies) == 2, copies


def test_a_segmentation_model_is_refused_in_one_line_before_training(tmp_path, digits):
    """DeepLabV3's first output is a [batch, classes, h, w] map: finetune says it trains classifiers, whatever evaluate says."""
    segmentation = {
        "source": "torchvision:deeplabv3_mobilenet_v3_large",
        "model_kwargs": {"weights": None, "weights_backbone": None, "num_classes": 4},
        "input_shape": (1, 3, 32, 32),
        "measure": {"latency": False, "warmup": 0, "iters": 1},
    }
    run = run_pass("finetune", {"max_steps": 1, "evaluate": False}, tmp_path=tmp_path, expect_status="failed", **segmentation)
    assert run.stage["error"] == (
        "stage 1 (finetune) failed: finetune trains classifiers: cross-entropy of [batch, classes] logits against class "
        "labels; the model's first output is [1, 4, 32, 32] (a dense map: segmentation, depth), which it does not train"
    )
    assert "accuracy" not in run.stage["error"] and "\n" not in run.stage["error"]
