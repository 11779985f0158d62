"""Device selection: auto | cpu | cuda | cuda:N | N, and never a silent CPU run."""

from __future__ import annotations

import pytest
import torch

from optkit.errors import PipelineError
from optkit.run.device import select_device


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("request_", ["auto", None, "cpu", " CPU "])
def test_cpu_and_auto_without_cuda(no_cuda: None, request_: str | None):
    assert select_device(request_) == torch.device("cpu")


@pytest.mark.parametrize("request_", ["cuda", "cuda:0", "0", 0, "1"])
def test_cuda_requested_where_there_is_none_is_an_error(no_cuda: None, request_: str | int):
    with pytest.raises(PipelineError, match="CUDA is not available here"):
        select_device(request_)


@pytest.mark.parametrize(
    "request_, expected",
    [("auto", torch.device("cuda", 0)), ("cuda", torch.device("cuda", 0)), ("cuda:1", torch.device("cuda", 1)), ("1", torch.device("cuda", 1)), (1, torch.device("cuda", 1))],
)
def test_cuda_spellings(two_gpus: None, request_: str | int, expected: torch.device):
    assert select_device(request_) == expected


def test_cuda_index_out_of_range(two_gpus: None):
    with pytest.raises(PipelineError, match=r"only 2 CUDA device\(s\) here \(0..1\)"):
        select_device("cuda:2")


@pytest.mark.parametrize("request_", ["gpu", "cuda:x", "mps0", "-1", ""])
def test_unknown_spellings(request_: str):
    with pytest.raises(PipelineError, match="expected auto, cpu, cuda, cuda:N or N"):
        select_device(request_)


@pytest.mark.cuda
def test_real_cuda_device():
    assert select_device("cuda").type == "cuda"
    assert select_device("auto").type == "cuda"
