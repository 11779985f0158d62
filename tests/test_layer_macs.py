"""MACs per layer (optkit info -v): never negative, containers are the sum of their children
(iterated ones too), names printed whole; and which thop distribution owns the thop folder."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from optkit.measure.flops import profile_macs
from optkit.reporting.console import render_info

ROOT = Path(__file__).resolve().parents[1]


class Iterated(nn.Module):
    """Containers iterated rather than called, as Ultralytics' root and smp's decoder blocks are."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 4)])
        self.register_buffer("mix", torch.eye(8))

    def forward(self, x):
        for layer in self.body:
            x = layer(x)
        v = x.mean((2, 3)) @ self.mix  # functional MACs of the root itself
        for layer in self.blocks:
            v = layer(v)
        return v


def test_iterated_containers_show_the_sum_of_their_children_and_nothing_is_negative():
    profile = profile_macs(Iterated(), torch.rand(2, 3, 16, 16))
    rows = {row["module"]: row for row in profile.layers}
    conv = 2 * 16 * 16 * 8 * 3 * 9 + 2 * 16 * 16 * 8 * 8
    linear = 2 * (8 * 8 + 8 * 4)
    assert rows["body"] == {"module": "body", "type": "Sequential", "depth": 1, "macs": conv, "self_macs": 0, "counted_by": "children", "calls": 0}
    assert rows["blocks"]["macs"] == linear and rows["blocks"]["calls"] == 0
    assert rows["(root)"]["self_macs"] == 2 * 8 * 8 and rows["(root)"]["counted_by"] == "aten"
    assert rows["(root)"]["macs"] == profile.macs == conv + linear + 2 * 8 * 8
    assert all(row["macs"] >= row["self_macs"] >= 0 for row in profile.layers)
    assert sum(entry["macs"] for entry in profile.per_module.values()) == profile.macs


def test_long_names_are_never_cut_in_a_narrow_console():
    model = nn.Sequential()
    model.add_module("a_rather_long_block_name_that_does_not_fit", nn.Sequential(nn.Conv2d(3, 4, 3)))
    profile = profile_macs(model, torch.rand(1, 3, 8, 8))
    info = {
        "model": "m", "input_shape": [1, 3, 8, 8], "device": "cpu", "params": 1, "trainable_params": 1, "nonzero_params": 1,
        "macs": profile.macs, "gmacs": 0.0, "gflops": 0.0, "size_bytes": 1, "unit": "MACs", "parameters": [],
        "layer_macs": profile.layers, "thop": {"warning": "the installed thop is someone else's"},
    }
    console = Console(width=60, record=True, force_terminal=False)
    render_info(info, console)
    text = console.export_text()
    cells = [line.split("│") for line in text.splitlines() if line.count("│") == 7]  # rows of the 6-column layer table
    module_column = "".join(cell[1].strip() for cell in cells)
    assert "a_rather_long_block_name_that_does_not_fit.0" in module_column
    assert "…" not in text[text.index("MACs per layer") :]
    assert "warning: the installed thop is someone else's" in text


def _hash(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def _fake_dist(site: Path, name: str, version: str, license: str, files: dict[str, str]) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: {license}\n")
    (info / "RECORD").write_text("".join(f"{p},sha256={_hash(t)},{len(t)}\n" for p, t in files.items()) + f"{info.name}/RECORD,,\n")


def _owner_in(site: Path) -> dict:
    """thop_owner() in a fresh interpreter that sees only ``site`` besides optkit."""
    # The module alone, loaded from its file: importing the optkit.measure package would import torch (seconds).
    module = ROOT / "optkit" / "measure" / "thop_distribution.py"
    code = (
        "import importlib.util, json, sys; "
        f"spec = importlib.util.spec_from_file_location('thop_distribution', {str(module)!r}); "
        "m = importlib.util.module_from_spec(spec); sys.modules['thop_distribution'] = m; spec.loader.exec_module(m); "
        "o = m.thop_owner(); print(json.dumps({**o.as_dict(), 'warning': m.thop_warning(o)}))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_owner_of_the_thop_folder_is_told_by_record_hashes(tmp_path):
    site = tmp_path / "site"
    lyken = {"thop/__init__.py": "# lyken\n", "thop/profile.py": "# lyken profile\n"}
    ultra = {"thop/__init__.py": "# ultralytics\n", "thop/profile.py": "# ultralytics profile\n"}
    _fake_dist(site, "thop", "0.1.1.post2209072238", "MIT", lyken)
    _fake_dist(site, "ultralytics-thop", "2.2.3", "AGPL-3.0", ultra)
    (site / "thop").mkdir()
    for path, text in ultra.items():  # ultralytics-thop installed last: its files are on disk
        (site / path).write_text(text)
    owner = _owner_in(site)
    assert owner["owner"] == "ultralytics-thop" and owner["license"] == "AGPL-3.0" and not owner["mixed"]
    assert "is ultralytics-thop 2.2.3 (AGPL-3.0), not the thop 0.1.1.post2209072238" in owner["warning"]
    assert "also installed: thop 0.1.1.post2209072238" in owner["warning"]
    (site / "thop/profile.py").write_text(lyken["thop/profile.py"])  # the other one's profile.py on top
    assert _owner_in(site)["mixed"]
    for path, text in lyken.items():
        (site / path).write_text(text)
    owner = _owner_in(site)
    assert owner["owner"] == "thop" and owner["warning"] is None


@pytest.mark.thop
def test_macs_are_the_same_whichever_thop_owns_the_folder():
    """Figures measured with the Lyken17 thop; the ultralytics job runs this with ultralytics-thop,
    whose own profile() counts vit_b_16 +122,400 (softmax and scaling in its attention rule) and a
    ModuleDict of Linear + attention blocks +50%."""
    import torchvision

    torch.manual_seed(0)
    lstm = nn.Sequential()
    lstm.add_module("lstm", nn.LSTM(16, 32, num_layers=2, batch_first=True))
    blocks = nn.ModuleDict({"a": nn.Linear(64, 64), "b": nn.Linear(64, 64)})
    cases = {
        "resnet18@224": (torchvision.models.resnet18(), torch.rand(1, 3, 224, 224), 1_814_073_344),
        "vit_b_16@64": (torchvision.models.vit_b_16(image_size=64), torch.rand(1, 3, 64, 64), 1_459_421_184),
        "lstm": (lstm, torch.rand(2, 5, 16), 153_600),  # thop's LSTM rule, the same in both
        "moduledict": (_DictOfBlocks(blocks), torch.rand(2, 16, 64), 2 * 2 * 16 * 64 * 64 + 2 * 2 * 16 * 16 * 64),
    }
    for name, (model, x, expected) in cases.items():
        assert profile_macs(model.eval(), x).macs == expected, name


class _DictOfBlocks(nn.Module):
    """A ModuleDict of Linear layers plus attention: ultralytics-thop registers ModuleDict as a layer."""

    def __init__(self, blocks: nn.ModuleDict):
        super().__init__()
        self.blocks = blocks

    def forward(self, x):
        for layer in self.blocks.values():
            x = layer(x)
        return torch.nn.functional.scaled_dot_product_attention(x, x, x)
