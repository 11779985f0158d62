"""The data: section: schema and file:line errors, dataset sources, transforms, limit, loaders on
the stage's device, checks before anything runs, and the dataset hook."""

from __future__ import annotations

import shutil
from pathlib import Path

import plugins_for_tests
import pytest
import torch
from PIL import Image

from optkit.config.data import DataSpec, TransformSpec
from optkit.config.pipeline import parse_pipeline
from optkit.data.digits import DIGITS_CLASSES, digits_imagefolder
from optkit.data.sources import image_folder
from optkit.data.transforms import build_transform
from optkit.errors import PipelineError, StageError
from optkit.host.facade import Host
from optkit.passes import PassContext, PassData
from optkit.run.runner import run_pipeline
from optkit.testing import run_pass


@pytest.fixture(scope="module")
def test_host() -> Host:
    return Host.with_plugins(plugins_for_tests, plugins_for_tests.NoiseDatasets())


def small_folder(digits, root: Path, classes=DIGITS_CLASSES, per_class: int = 2) -> Path:
    """A copy of a few val images per class of the digits: an ImageFolder to break in tests."""
    for name in classes:
        (root / name).mkdir(parents=True)
        for image in sorted((digits.val / name).iterdir())[:per_class]:
            shutil.copy(image, root / name / image.name)
    return root


def pipeline_text(data: str) -> str:
    return plugins_for_tests.DIGITS_PIPELINE.format(batch=1, measure=", latency: false", data=data, passes="  []")


def run(test_host, tmp_path, data: str, name: str = "p.yaml"):
    path = tmp_path / name
    path.write_text(pipeline_text(data))
    pipeline = parse_pipeline(path.read_text(), test_host.get_pass, path)
    return run_pipeline(pipeline, test_host, output=tmp_path / "run")


# --- the schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("  evl: imagefolder:val", r"p.yaml:8: unknown key 'data.evl'; did you mean 'eval'\?"),
        ("  eval: {source: imagefolder:val, batchsize: 8}", r"p.yaml:8: unknown key 'data.eval.batchsize'; did you mean 'batch_size'\?"),
        ("  eval: {source: imagefolder:val, limit: 0}", r"p.yaml:8: key 'data.eval.limit': Input should be greater than 0"),
        ("  eval: val", r"p.yaml:8: key 'data.eval': Value error, expected scheme:name, e.g. imagefolder:data/val"),
        ("  transform: {mean: [0.5]}\n  eval: imagefolder:val", r"p.yaml:8: key 'data.transform': Value error, mean and std go together"),
        ("  transform: {resize: [1, 2, 3]}\n  eval: imagefolder:val", r"p.yaml:8: key 'data.transform.resize'"),
        ("  num_workers: 0", r"p.yaml:7: key 'data': Value error, data: names no data set; give at least one of eval, train, calibration"),
    ],
)
def test_bad_data_sections_are_errors_with_the_line(test_host, tmp_path, data, message):
    path = tmp_path / "p.yaml"
    path.write_text(pipeline_text(data))
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(path.read_text(), test_host.get_pass, path)


def test_accuracy_settings_need_data_eval(test_host, tmp_path):
    text = "model: {source: python:optkit.testing:tiny_convnet}\nmeasure:\n  max_accuracy_drop: 0.01\n"
    with pytest.raises(PipelineError, match=r"^<pipeline>:3: measure.max_accuracy_drop needs data.eval"):
        parse_pipeline(text, test_host.get_pass)
    text = "model: {source: python:optkit.testing:tiny_convnet}\nmeasure: {accuracy: true}\ndata: {train: imagefolder:t}\n"
    with pytest.raises(PipelineError, match=r"^<pipeline>:2: measure.accuracy: true needs data.eval"):
        parse_pipeline(text, test_host.get_pass)


def test_a_data_section_is_validated_and_resolved_against_the_file(test_host, tmp_path):
    path = tmp_path / "sub" / "p.yaml"
    path.parent.mkdir()
    path.write_text(pipeline_text("  eval: imagefolder:val\n  root: ../data"))
    pipeline = parse_pipeline(path.read_text(), test_host.get_pass, path)
    assert pipeline.data.eval.source == "imagefolder:val" and pipeline.data.eval.batch_size == 64
    assert pipeline.data_dir == tmp_path / "data"  # absolute and normalized
    assert pipeline.evaluates_accuracy
    assert pipeline.summary()["data"] == {"eval": {"source": "imagefolder:val"}, "root": "../data"}


# --- sources, transforms and limit -------------------------------------------------------------------


def test_the_digits_folder_is_a_seeded_stratified_split(digits, tmp_path):
    assert digits.counts == {"train": 1437, "val": 360}
    assert sorted(p.name for p in digits.val.iterdir()) == list(DIGITS_CLASSES)
    per_class = [len(list((digits.val / c).iterdir())) for c in DIGITS_CLASSES]
    assert sum(per_class) == 360 and min(per_class) >= 35  # stratified: every class ~ 20%
    again = digits_imagefolder(tmp_path / "again", size=8)
    assert sorted(p.name for p in (again.val / "3").iterdir()) == sorted(p.name for p in (digits.val / "3").iterdir())
    with Image.open(next((again.val / "3").iterdir())) as image8, Image.open(next((digits.val / "3").iterdir())) as image32:
        assert (image8.size, image8.mode, image32.size, image32.mode) == ((8, 8), "RGB", (32, 32), "RGB")
    assert digits_imagefolder(tmp_path / "again", size=8).counts == again.counts  # reused as it is
    with pytest.raises(PipelineError, match=r"holds digits written with \{'size': 8, .*\}, not \{'size': 16"):
        digits_imagefolder(tmp_path / "again", size=16)


def test_the_transform_resizes_crops_scales_and_normalizes():
    image = Image.new("RGB", (40, 30), (255, 0, 51))
    out = build_transform(TransformSpec(resize=36, center_crop=32, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]))(image)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and list(out.shape) == [3, 32, 32]
    torch.testing.assert_close(out[:, 16, 16], torch.tensor([1.0, -1.0, 51 / 255 * 2 - 1]), rtol=0, atol=1e-6)
    plain = build_transform(TransformSpec())(image)
    assert list(plain.shape) == [3, 30, 40] and float(plain.max()) == 1.0


def test_loaders_read_the_folder_in_order_with_limit(test_host, digits):
    spec = DataSpec(eval={"source": f"imagefolder:{digits.val}", "batch_size": 50, "limit": 120},
                    train={"source": f"imagefolder:{digits.train}", "batch_size": 32, "shuffle": True, "limit": 100})
    data = test_host.load_data(spec, Path.cwd(), seed=0)
    reference = image_folder(digits.val, build_transform(TransformSpec()))
    inputs, labels = zip(*(reference[i] for i in range(120)))  # limit without shuffle: the first 120

    got = [(x, y) for x, y in data.on_device(torch.device("cpu")).eval]
    assert [len(y) for _, y in got] == [50, 50, 20]
    torch.testing.assert_close(torch.cat([x for x, _ in got]), torch.stack(inputs), rtol=0, atol=0)
    assert torch.cat([y for _, y in got]).tolist() == list(labels)
    assert data.details()["eval"] == {"source": f"imagefolder:{digits.val}", "folder": str(digits.val), "samples": 120,
                                      "batch_size": 50, "classes": 10}
    assert data.details()["calibration"] == {"same_as": "train"}
    assert data.get("calibration") is data.get("train")


def test_limit_with_shuffle_is_a_seeded_subset(test_host, digits):
    spec = DataSpec(train={"source": f"imagefolder:{digits.train}", "shuffle": True, "limit": 100})
    first = test_host.load_data(spec, Path.cwd(), seed=0).get("train").samples.dataset.indices
    again = test_host.load_data(spec, Path.cwd(), seed=0).get("train").samples.dataset.indices
    other = test_host.load_data(spec, Path.cwd(), seed=1).get("train").samples.dataset.indices
    assert first == again != other and len(first) == 100 and first != list(range(100))


def test_python_datasets_with_and_without_labels(test_host):
    spec = DataSpec(eval="python:plugins_for_tests:labeled_noise", train={"source": "noise:unlabeled", "kwargs": {"n": 6}})
    data = test_host.load_data(spec, Path.cwd())
    labels = torch.cat([y for _, y in data.on_device(torch.device("cpu")).eval])
    assert labels.tolist() == [i % 10 for i in range(20)]
    batches = list(data.on_device(torch.device("cpu")).train)
    assert [x.shape for x, _ in batches] == [torch.Size([6, 3, 64, 64])] and batches[0][1].tolist() == [-1] * 6
    assert data.details()["train"]["generator"] == "unlabeled"  # what the plugin's loader reported


def test_hook_optkit_register_datasets(tmp_path):
    """A plugin's scheme is used by name in a pipeline, and a pass reads it through ctx.data."""
    run = run_pass("reads_calibration", tmp_path=tmp_path, plugins=[plugins_for_tests, plugins_for_tests.NoiseDatasets()],
                   data={"calibration": {"source": "noise:unlabeled", "batch_size": 8, "kwargs": {"n": 20}}})
    assert run.stage["details"] == {"batches": 3, "samples": 20, "labels": [-1], "devices": ["cpu"], "shapes": [[3, 64, 64]]}
    assert run.baseline["details"]["data"]["calibration"]["generator"] == "unlabeled"
    assert "accuracy" not in run.metrics  # no data.eval: nothing to evaluate on


def test_unknown_dataset_schemes_are_named_with_the_closest(test_host, tmp_path):
    with pytest.raises(PipelineError, match=r"data.eval: unknown dataset source scheme 'imagefolders'; did you mean 'imagefolder' or 'images'\?"):
        run(test_host, tmp_path, "  eval: imagefolders:val")


# --- checks before anything runs ----------------------------------------------------------------------


def assert_nothing_ran(tmp_path):
    assert not (tmp_path / "run").exists()


def test_a_missing_folder_is_named(test_host, tmp_path):
    with pytest.raises(PipelineError, match=rf"^data.eval: no such folder {tmp_path}/nowhere \(from imagefolder:nowhere\)$"):
        run(test_host, tmp_path, "  eval: imagefolder:nowhere")
    assert_nothing_ran(tmp_path)


def test_an_empty_folder_and_empty_class_folders_are_named(test_host, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match=rf"^data.eval: {tmp_path}/empty holds no class folders"):
        run(test_host, tmp_path, "  eval: imagefolder:empty")
    (tmp_path / "empty" / "cat").mkdir()
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no image")
    with pytest.raises(PipelineError, match=r"has class folders \(cat\) but no images in them \(looked for .jpg, .jpeg, .png"):
        run(test_host, tmp_path, "  eval: imagefolder:empty")
    assert_nothing_ran(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_an_image_that_does_not_decode_is_named(test_host, tmp_path, digits, damage):
    folder = small_folder(digits, tmp_path / "val")
    victim = sorted((folder / "7").iterdir())[1]
    content = victim.read_bytes()
    victim.write_bytes(b"not an image at all" if damage == "garbage" else content[: len(content) // 2])
    with pytest.raises(PipelineError, match=rf"^data.eval: {victim} is not a readable image: "):
        run(test_host, tmp_path, "  eval: imagefolder:val")
    assert_nothing_ran(tmp_path)


def test_labels_that_do_not_fit_the_outputs_name_both_counts(test_host, tmp_path, digits):
    small_folder(digits, tmp_path / "val", classes=DIGITS_CLASSES[:4])
    with pytest.raises(PipelineError, match=r"^data.eval \(imagefolder:val\): 4 classes, but the model has 10 outputs; labels are output indices"):
        run(test_host, tmp_path, "  eval: imagefolder:val")
    assert_nothing_ran(tmp_path)


def test_a_transform_that_gives_the_wrong_shape_is_refused(test_host, tmp_path, digits):
    small_folder(digits, tmp_path / "val")
    with pytest.raises(PipelineError, match=r"^data.eval \(imagefolder:val\): samples have shape \[3, 36, 36\], but model.input_shape "
                                            r"\[1, 3, 32, 32\] takes samples of shape \[3, 32, 32\]; resize or crop them"):
        run(test_host, tmp_path, "  transform: {resize: 36}\n  eval: imagefolder:val")
    # the same folder through a transform that fits runs
    report, _ = run(test_host, tmp_path, "  transform: {resize: 36, center_crop: 32}\n  eval: imagefolder:val")
    assert report.status == "ok" and report.stages[0].metrics.accuracy.n == 20


def test_a_python_dataset_of_the_wrong_kind_is_refused(test_host, tmp_path):
    with pytest.raises(PipelineError, match=r"^data.eval \(python:plugins_for_tests:labeled_noise\): samples have shape \[3, 64, 64\]"):
        run(test_host, tmp_path, "  eval: python:plugins_for_tests:labeled_noise")
    with pytest.raises(PipelineError, match=r"^data.eval: plugins_for_tests has no callable 'nothing'"):
        run(test_host, tmp_path, "  eval: python:plugins_for_tests:nothing")
    with pytest.raises(PipelineError, match=r"^data.eval.kwargs: plugins_for_tests:labeled_noise: .*unexpected keyword argument 'colour'"):
        run(test_host, tmp_path, "  eval: {source: 'python:plugins_for_tests:labeled_noise', kwargs: {colour: red}}")


# --- what passes get --------------------------------------------------------------------------------


def test_a_pass_that_needs_data_and_gets_none_names_the_entry_to_add(tmp_path):
    run = run_pass("reads_calibration", tmp_path=tmp_path, plugins=[plugins_for_tests], expect_status="failed")
    assert run.stage["error"] == (
        "stage 1 (reads_calibration) failed: this pass needs calibration data, and the pipeline has no data: section; "
        "add one, e.g. data: {calibration: {source: imagefolder:PATH}}"
    )
    with pytest.raises(StageError, match=r"^this pass needs train data: add data.train to the pipeline"):
        PassData(eval=[]).require("train")


def test_calibration_falls_back_to_train_then_eval_on_the_stage_device(tmp_path, digits):
    run = run_pass("reads_calibration", tmp_path=tmp_path, plugins=[plugins_for_tests], source="python:optkit.testing:digits_cnn",
                   input_shape=(1, 3, 32, 32), data={"eval": {"source": f"imagefolder:{digits.val}", "limit": 40, "batch_size": 16}})
    assert run.stage["details"] == {"batches": 3, "samples": 40, "labels": [0, 1], "devices": ["cpu"], "shapes": [[3, 32, 32]]}
    assert PassContext.__dataclass_fields__["data"].default is None


def test_python_eval_data_without_labels_gives_agreement_only(tmp_path):
    run = run_pass("identity", tmp_path=tmp_path, plugins=[plugins_for_tests], data={"eval": "python:plugins_for_tests:unlabeled_noise"})
    agreement = run.metrics["agreement"]
    assert "accuracy" not in run.metrics and (agreement["top1"], agreement["n"]) == (1.0, 20)
    assert (agreement["previous"]["top1"], agreement["previous"]["n"]) == (1.0, 20)  # against the stage before: the baseline
    assert agreement["previous"]["cosine"] == pytest.approx(1.0)
    labeled = run_pass("identity", tmp_path=tmp_path, plugins=[plugins_for_tests], data={"eval": "python:plugins_for_tests:labeled_noise"})
    assert labeled.metrics["accuracy"]["n"] == 20 and labeled.metrics["accuracy"] == labeled.baseline["metrics"]["accuracy"]


def test_python_labels_beyond_the_outputs_fail_naming_both_counts(tmp_path):
    run = run_pass("identity", tmp_path=tmp_path, plugins=[plugins_for_tests], expect_status="skipped",
                   data={"eval": {"source": "python:plugins_for_tests:labeled_noise", "kwargs": {"classes": 12}}})
    assert run.report["error"] == (
        "baseline (model loading and measurement) failed: data.eval has label 11, but the model has 10 outputs "
        "(labels must be output indices)"
    )
