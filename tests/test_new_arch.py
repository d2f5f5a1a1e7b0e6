"""Adding an architecture is one `register` call: a throwaway one, registered here, goes through
load, upscale, train and distill without any other module knowing its name."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from conftest import DATA
from srkd_cli import archs
from srkd_cli.archs import ArchSpec, SRModel
from srkd_cli.checkpoint import load_checkpoint, save_checkpoint
from srkd_cli.training import recipes


class Tiny(SRModel):
    def __init__(self, scale: int = 2, width: int = 6):
        super().__init__()
        self.scale, self.feature_names = scale, ("F1",)
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.tail = nn.Sequential(nn.Conv2d(width, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def _forward(self, x, names):
        f = torch.relu(self.head(x))
        return self.tail(f) + nn.functional.interpolate(x, scale_factor=self.scale), {n: f for n in names}


@pytest.fixture
def tiny(monkeypatch):
    spec = archs.register(ArchSpec(name="tiny", cls=Tiny, defaults={"width": 6}, detect=lambda sd: None,
                                   description="a throwaway test architecture", feature_names=lambda cfg: ("F1",),
                                   bytes_per_pixel=lambda cfg, s: 4 * (cfg["width"] + 6 * s * s)))
    monkeypatch.setitem(recipes.PAIRINGS, ("tiny", "tiny"), recipes.Pairing(
        "feature", lambda t: {"width": t["width"]}, lambda s, t: [("F1", "F1")], "test pairing"))
    try:
        yield spec
    finally:
        archs.unregister(spec.name)  # registered for this test only


def test_a_new_architecture_needs_only_its_registry_entry(tiny, tmp_path, run_cli):
    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "tiny.safetensors", Tiny(2, width=4), "tiny", {"width": 4})
    lm = load_checkpoint(weights)
    assert (lm.spec.name, lm.scale, lm.config) == ("tiny", 2, {"width": 4})

    src = DATA / "Set5" / "LR_bicubic" / "X2" / "birdx2.png"
    code, _, err = run_cli("upscale", src, "-o", tmp_path / "up.png", "--weights", weights, "--tile", "48", "--tile-overlap", "8", "--quiet")
    assert code == 0, err
    assert Image.open(tmp_path / "up.png").size == tuple(2 * v for v in Image.open(src).size)

    common = ["--scale", "2", "--data", DATA / "Set5" / "HR", "--steps", "3", "--batch", "2", "--patch", "12",
              "--val-every", "0", "--device", "cpu", "--quiet"]
    code, _, err = run_cli("train", "--arch", "tiny", "--set", "width=5", *common, "--out", tmp_path / "train")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "train" / "final.safetensors").config == {"width": 5}

    code, _, err = run_cli("distill", "--teacher", weights, "--student", "tiny", *common, "--out", tmp_path / "kd",
                           "--teacher-cache", "ram", "--out-weight", "0.5")
    assert code == 0, err
    student = load_checkpoint(tmp_path / "kd" / "final.safetensors")
    assert student.config == {"width": 4}  # derived from the teacher by the pairing
