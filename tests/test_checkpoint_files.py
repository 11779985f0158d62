"""Reading checkpoint files: safe unpickling, refusals that name the blocked global, bad files, devices."""

from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from optkit.errors import CheckpointError
from optkit.models.checkpoint_files import read_checkpoint, sniff_format


class _CreatesAFile:
    """A pickle payload: unpickling it calls ``os.system`` (it would create ``marker``)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "payload": _CreatesAFile(marker)}, path, _use_new_zipfile_serialization=zip_format)

    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)

    message = str(info.value)
    assert "refused to unpickle GLOBAL" in message and "system" in message  # posix.system / os.system
    assert "trust_checkpoint: true" in message and "--trust-checkpoint" in message
    assert not marker.exists()


def test_a_whole_module_needs_the_opt_in_and_loads_with_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    path = tmp_path / "whole.pt"
    torch.save(model, path)

    with pytest.raises(CheckpointError, match=r"GLOBAL .*torch\.nn\.modules\.container\.Sequential"):
        read_checkpoint(path, option="model.source")

    loaded = read_checkpoint(path, trust=True, option="model.source")
    assert isinstance(loaded.obj, nn.Sequential) and loaded.trusted
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded.obj(x), model(x), rtol=0, atol=0)


def test_a_trusted_module_whose_code_is_missing_names_the_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "optkit_test_vanishing.py").write_text("from torch import nn\n\nclass Net(nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(code))
    import optkit_test_vanishing

    path = tmp_path / "whole.pt"
    torch.save(optkit_test_vanishing.Net(2, 2), path)
    monkeypatch.delitem(sys.modules, "optkit_test_vanishing")
    sys.path.remove(str(code))
    with pytest.raises(CheckpointError, match=r"need code this environment lacks \(No module named 'optkit_test_vanishing'\)"):
        read_checkpoint(path, trust=True, option="model.source")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's note on the plain pickle
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "the file is empty"),
        (b"hello, not a checkpoint\n", "not a PyTorch checkpoint or safetensors file"),
        (b"\x80\x04\x95\x0a\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.", "not a PyTorch checkpoint, or a pickle"),
    ],
    ids=["empty", "text", "plain-pickle"],
)
def test_files_that_are_not_checkpoints_get_a_clear_error(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value) and str(info.value).startswith("model.weights:")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_truncated_checkpoint_gets_a_clear_error(tmp_path: Path, zip_format: bool) -> None:
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.randn(64, 64)}, path, _use_new_zipfile_serialization=zip_format)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read it as a PyTorch checkpoint"):
        read_checkpoint(path)


def test_missing_file_and_folder_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="a folder, not a file"):
        read_checkpoint(tmp_path)


def _saved_on_cuda0(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a zip checkpoint whose tensors claim to be saved on ``cuda:0`` (no GPU needed)."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("data.pkl"):  # the location string in the persistent id
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            target.writestr(info.filename, data)


def test_the_device_tensors_were_saved_on_is_reported_and_mapped(tmp_path: Path) -> None:
    path = tmp_path / "gpu.pt"
    weights = torch.arange(6.0).reshape(2, 3)
    _saved_on_cuda0(path, {"w": weights})

    for map_location in ("cpu", {"cuda:0": "cpu"}):
        loaded = read_checkpoint(path, map_location=map_location)
        assert loaded.saved_on == ["cuda:0"]
        assert loaded.obj["w"].device.type == "cpu"
        torch.testing.assert_close(loaded.obj["w"], weights, rtol=0, atol=0)
        assert loaded.account()["saved_on"] == ["cuda:0"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_a_map_location_this_machine_cannot_reach_names_the_saved_device(tmp_path: Path) -> None:
    path = tmp_path / "gpu.pt"
    _saved_on_cuda0(path, {"w": torch.ones(2)})
    with pytest.raises(CheckpointError, match=r"map_location: \{'cuda:0': 'cuda:1'\} sends tensors saved on cuda:0"):
        read_checkpoint(path, map_location={"cuda:0": "cuda:1"})
    with pytest.raises(CheckpointError, match="names a device torch does not know"):
        read_checkpoint(path, map_location="gpu0")


@pytest.mark.cuda
def test_map_location_moves_tensors_to_the_gpu(tmp_path: Path) -> None:
    path = tmp_path / "cpu.pt"
    torch.save({"w": torch.ones(2)}, path)
    loaded = read_checkpoint(path, map_location={"cpu": "cuda:0"})
    assert loaded.saved_on == ["cpu"] and loaded.obj["w"].device == torch.device("cuda", 0)


def test_safetensors_are_read_without_pickle_whatever_the_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensors = {"a.weight": torch.randn(3, 2), "a.bias": torch.randn(3)}
    named = tmp_path / "model.safetensors"
    misnamed = tmp_path / "model.bin"
    save_file(tensors, named, metadata={"source": "test"})
    misnamed.write_bytes(named.read_bytes())

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be used for safetensors")

    monkeypatch.setattr(torch, "load", no_pickle)
    for path in (named, misnamed):
        assert sniff_format(path) == "safetensors"
        loaded = read_checkpoint(path)
        assert loaded.format == "safetensors" and loaded.metadata == {"source": "test"}
        for key, value in tensors.items():
            torch.testing.assert_close(loaded.obj[key], value, rtol=0, atol=0)


def test_a_truncated_safetensors_file_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(32, 32)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="cannot read this safetensors file"):
        read_checkpoint(path)
