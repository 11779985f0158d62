"""Hostile ``data:`` inputs (issue 25, items 2, 7 and the data ones of 10): image folders that could
relabel or multiply samples through links, hidden folders, empty class folders, class lists that
differ between entries, images too large to decode, labels and pixel values that mean nothing."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch

import plugins_for_tests
from optkit.config.pipeline import parse_pipeline
from optkit.data.digits import DIGITS_CLASSES
from optkit.data.loaders import as_labeled
from optkit.errors import PipelineError
from optkit.host.facade import Host
from optkit.run.runner import run_pipeline


@pytest.fixture(scope="module")
def test_host() -> Host:
    return Host.with_plugins(plugins_for_tests, plugins_for_tests.NoiseDatasets())


def small_folder(digits, root: Path, classes=DIGITS_CLASSES, per_class: int = 2, names=None) -> Path:
    """A few val images per class of the digits (class folders named ``names`` when given)."""
    for name, folder in zip(classes, names or classes):
        (root / folder).mkdir(parents=True)
        for image in sorted((digits.val / name).iterdir())[:per_class]:
            shutil.copy(image, root / folder / image.name)
    return root


def run(test_host, tmp_path, data: str):
    path = tmp_path / "p.yaml"
    path.write_text(plugins_for_tests.DIGITS_PIPELINE.format(batch=1, measure=", latency: false", data=data, passes="  []"))
    return run_pipeline(parse_pipeline(path.read_text(), test_host.get_pass, path), test_host, output=tmp_path / "run")


def png_header(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG that declares ``width`` × ``height`` but holds one row: cheap to write,
    a decompression bomb to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b"")


# --- links, hidden entries, empty class folders -------------------------------------------------------


@pytest.mark.parametrize(("link", "target"), [("loop", "."), ("up", "..")])
def test_a_link_to_a_folder_inside_an_image_folder_is_refused(test_host, tmp_path, digits, link, target):
    folder = small_folder(digits, tmp_path / "val")
    os.symlink(target, folder / "6" / link)
    with pytest.raises(PipelineError, match=rf"^data.eval: {folder}/6/{link} is a link to a folder; image folders follow no folder links"):
        run(test_host, tmp_path, "  eval: imagefolder:val")
    assert not (tmp_path / "run").exists()


def test_a_link_to_an_image_outside_the_data_root_is_refused_and_one_inside_is_followed(test_host, tmp_path, digits):
    folder = small_folder(digits, tmp_path / "val")
    outside = tmp_path / "elsewhere.png"
    shutil.copy(next((folder / "3").iterdir()), outside)
    os.symlink(outside, folder / "3" / "linked.png")
    with pytest.raises(PipelineError, match=rf"^data.eval: {folder}/3/linked.png links to {outside}, outside the data folder {folder}"):
        run(test_host, tmp_path, "  eval: imagefolder:val")
    (folder / "3" / "linked.png").unlink()
    os.symlink(next((folder / "4").iterdir()), folder / "3" / "linked.png")  # inside: followed, once
    report, _ = run(test_host, tmp_path, "  eval: imagefolder:val")
    assert report.status == "ok" and report.stages[0].metrics.accuracy.n == 21


def test_hidden_folders_and_files_are_ignored(test_host, tmp_path, digits):
    folder = small_folder(digits, tmp_path / "val")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / "5" / ".ipynb_checkpoints").mkdir()
    shutil.copy(next((folder / "5").iterdir()), folder / "5" / ".ipynb_checkpoints" / "copy.png")
    shutil.copy(next((folder / "5").iterdir()), folder / "5" / ".hidden.png")
    report, _ = run(test_host, tmp_path, "  eval: imagefolder:val")
    assert report.status == "ok"
    assert report.stages[0].metrics.accuracy.n == 20
    assert report.stages[0].details["data"]["eval"]["classes"] == 10


def test_a_hidden_folder_cannot_shift_the_labels_of_a_missing_class(test_host, tmp_path, digits):
    """The probe's case: class 0 missing, an empty hidden folder in its place, every label one off."""
    folder = small_folder(digits, tmp_path / "val", classes=DIGITS_CLASSES[1:])
    (folder / ".ipynb_checkpoints").mkdir()
    with pytest.raises(PipelineError, match=r"9 classes, but the model has 10 outputs"):
        run(test_host, tmp_path, "  eval: imagefolder:val")


def test_a_class_folder_without_images_is_an_error(test_host, tmp_path, digits, cli):
    folder = small_folder(digits, tmp_path / "val")
    for image in (folder / "7").iterdir():
        image.unlink()
    (folder / "7" / "notes.txt").write_text("no image")
    with pytest.raises(PipelineError, match=rf"^data.eval: class folder {folder}/7 holds no images \(looked for .jpg"):
        run(test_host, tmp_path, "  eval: imagefolder:val")
    pipeline = tmp_path / "p.yaml"  # written by run()
    result = cli("run", pipeline, "-o", tmp_path / "cli-run")
    assert result.exit_code == 2 and f"error: data.eval: class folder {folder}/7 holds no images" in result.stderr


def test_train_and_eval_class_lists_must_match(test_host, tmp_path, digits):
    small_folder(digits, tmp_path / "val")
    small_folder(digits, tmp_path / "train", names=list("abcdefghij"))
    with pytest.raises(PipelineError, match=r"^data.train \(imagefolder:train\) has the classes a, b, c, d, e, \.\.\. but data.eval "
                                            r"has 0, 1, 2, 3, 4, \.\.\.; the same label would mean different classes"):
        run(test_host, tmp_path, "  eval: imagefolder:val\n  train: imagefolder:train")


# --- image headers and the pixel limit ----------------------------------------------------------------


def test_a_decompression_bomb_is_refused_naming_the_file_and_the_entry(tmp_path, digits, cli):
    folder = small_folder(digits, tmp_path / "val")
    bomb = folder / "2" / "zz-bomb.png"
    bomb.write_bytes(png_header(20000, 20000))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(plugins_for_tests.DIGITS_PIPELINE.format(batch=1, measure=", latency: false", data="  eval: imagefolder:val",
                                                                 passes="  []"))
    result = cli("run", pipeline, "-o", tmp_path / "run")
    assert result.exit_code == 2, result.stderr
    assert f"error: data.eval: {bomb} has more pixels than the limit of 67,108,864 (8192 × 8192) (Image size (400000000" in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(test_host, tmp_path, digits, monkeypatch):
    import optkit.data.folders

    folder = small_folder(digits, tmp_path / "val")
    monkeypatch.setattr(optkit.data.folders, "MAX_IMAGE_PIXELS", 32 * 32 - 1)
    with pytest.raises(PipelineError, match=rf"^data.eval: {folder}/0/\S+.png is 32 × 32 = 1,024 pixels, more than the limit of 1,023"):
        run(test_host, tmp_path, "  eval: imagefolder:val")


def test_images_source_follows_the_same_rules(test_host, tmp_path, digits):
    folder = small_folder(digits, tmp_path / "calib")
    os.symlink(".", folder / "4" / "loop")
    with pytest.raises(PipelineError, match=r"^data.calibration: .*/4/loop is a link to a folder"):
        run(test_host, tmp_path, "  calibration: images:calib")
    (folder / "4" / "loop").unlink()
    (folder / "9" / "zz-bomb.png").write_bytes(png_header(20000, 20000))
    with pytest.raises(PipelineError, match=r"^data.calibration: .*/9/zz-bomb.png has more pixels than the limit"):
        run(test_host, tmp_path, "  calibration: images:calib")


# --- labels and values --------------------------------------------------------------------------------


def test_a_negative_label_other_than_minus_one_is_refused():
    assert as_labeled((torch.zeros(3), -1), "data.eval")[1] == -1
    with pytest.raises(PipelineError, match=r"^data.eval: a sample's label is -3; labels are class indices 0, 1, \.\.\. or -1 for none"):
        as_labeled((torch.zeros(3), -3), "data.eval")
    with pytest.raises(PipelineError, match=r"label is -3"):
        as_labeled((torch.zeros(3), torch.tensor(-3)), "data.eval")


# --- resources ---------------------------------------------------------------------------------------


def test_num_workers_above_the_cpus_available_is_refused_with_the_line(test_host, tmp_path):
    cpus = len(os.sched_getaffinity(0))
    with pytest.raises(PipelineError, match=rf"^{tmp_path}/p.yaml:\d+: key 'data.num_workers': Value error, {cpus + 1} worker processes, "
                                            rf"but this process may use {cpus} CPUs?; give at most {cpus}"):
        run(test_host, tmp_path, f"  num_workers: {cpus + 1}\n  eval: imagefolder:val")
    assert not (tmp_path / "run").exists()


def test_nonfinite_eval_inputs_are_counted_and_warned_about(tmp_path, caplog):
    text = plugins_for_tests.TINY_PIPELINE.format(passes="  - identity").replace(
        "device: cpu", "device: cpu\ndata:\n  eval: {source: 'python:plugins_for_tests:nonfinite_noise', batch_size: 4}")
    test_host = Host.with_plugins(plugins_for_tests)
    report, _ = run_pipeline(parse_pipeline(text, test_host.get_pass), test_host, output=tmp_path / "run")
    assert report.status == "ok"
    for stage in report.stages:
        assert stage.metrics.accuracy.nonfinite_inputs == 2
    assert "data.eval: 2 of 8 samples hold NaN or infinite values" in caplog.text
