"""The dataset source npz:FILE, through the host as a pipeline's data: entry, and in a run."""

from __future__ import annotations

import numpy as np

from optkit.testing import load_dataset, raises_user_error, run_pass


def write_npz(path, n=8, **arrays):
    rng = np.random.default_rng(0)
    arrays = arrays or {"x": rng.random((n, 3, 64, 64), dtype=np.float32), "y": np.arange(n) % 10}
    np.savez(path, **arrays)
    return path


def test_samples_and_labels_come_from_the_arrays(tmp_path):
    write_npz(tmp_path / "val.npz", n=5)
    loaded = load_dataset("npz:val.npz", base_dir=tmp_path)
    inputs, label = loaded.samples[3]
    assert len(loaded.samples) == 5 and tuple(inputs.shape) == (3, 64, 64) and label == 3
    assert loaded.details["file"] == str(tmp_path / "val.npz")


def test_wrong_input_is_the_users_error_naming_the_entry(tmp_path):
    with raises_user_error(rf"^data.eval \(npz:missing.npz\): no such file {tmp_path}/missing.npz$"):
        load_dataset("npz:missing.npz", base_dir=tmp_path)
    (tmp_path / "text.npz").write_text("not numpy")
    with raises_user_error(r"^data.train \(npz:text.npz\): .*text.npz is not a NumPy .npz file"):
        load_dataset("npz:text.npz", base_dir=tmp_path, role="train")
    write_npz(tmp_path / "inputs_only.npz", x=np.zeros((2, 3, 4, 4), dtype=np.float32))
    with raises_user_error(r"inputs_only.npz has no array y \(it has x\)$"):
        load_dataset("npz:inputs_only.npz", base_dir=tmp_path)


def test_a_run_measures_accuracy_on_it(tmp_path):
    data = write_npz(tmp_path / "val.npz")
    run = run_pass("strip_dropout", tmp_path=tmp_path / "run", dataset=f"npz:{data}")
    assert run.baseline["metrics"]["accuracy"]["n"] == 8
    assert run.metrics["agreement"]["top1"] == 1.0
