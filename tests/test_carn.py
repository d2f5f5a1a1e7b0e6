"""CARN-M: the official multi-scale file loads at each scale through the architecture's own
canonicalize hook, scores near its published Set5 figures, saves natively, and teaches SqueezeSR."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import DATA, shared_path
from srkd_cli.archs import build_model, count_params, detect_arch
from srkd_cli.checkpoint import load_checkpoint, save_checkpoint
from srkd_cli.errors import CheckpointError
from srkd_cli.zoo import get_zoo, sha256_file

PARAMS = {2: 257_051, 3: 303_451, 4: 294_171}
# srkd eval of the official file (the CARN paper's own evaluation differs slightly: 37.53 / 33.99 / 31.92)
MEASURED_SET5 = {2: 37.68, 3: 34.06, 4: 31.88}


def official() -> str:
    return str(shared_path("teachers", "carn_m.pth"))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_file_loads_the_upsampler_of_the_requested_scale(scale):
    lm = load_checkpoint(official(), scale=scale)
    assert (lm.spec.name, lm.scale, lm.config) == ("carn-m", scale, {"n_feats": 64, "groups": 4})
    assert count_params(lm.model) == PARAMS[scale]
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        out, feats = lm.model.forward_with_features(x, ("T1", "T2", "T3"))
    assert out.shape == (1, 3, 10 * scale, 12 * scale)
    assert all(f.shape == (1, 64, 10, 12) for f in feats.values())


def test_multi_scale_file_without_a_scale_says_so():
    with pytest.raises(CheckpointError, match=r"carn_m.pth: holds a CARN-M upsampler for each of x2, x3, x4: give --scale"):
        load_checkpoint(official())


def test_native_file_is_single_scale(tmp_path):
    lm = load_checkpoint(official(), scale=3)
    path = save_checkpoint(tmp_path / "carn3.safetensors", lm.model, "carn-m", lm.config)
    again = load_checkpoint(path)
    assert again.scale == 3
    assert all(torch.equal(a, b) for a, b in zip(lm.model.state_dict().values(), again.model.state_dict().values()))
    found = detect_arch(build_model("carn-m", 4).state_dict())
    assert found is not None and found[0].name == "carn-m" and found[2] == 4


@pytest.mark.parametrize("scale", [2, 4])
def test_set5_psnr(scale, set5, run_cli, tmp_path):
    out = tmp_path / "r.json"
    code, _, err = run_cli("eval", "--weights", official(), "--data", set5, "--scale", scale, "--backend", "torch",
                           "--json", out)
    assert code == 0, err
    (record,) = json.loads(out.read_text())
    assert record["psnr_y"] == pytest.approx(MEASURED_SET5[scale], abs=0.01)


def test_zoo_entries_share_one_official_file():
    entries = [get_zoo().get(f"carn-m-x{s}") for s in (2, 3, 4)]
    assert {e.sources[0].url for e in entries} == {"https://github.com/nmhkahn/CARN-pytorch/raw/master/checkpoint/carn_m.pth"}
    assert {e.sources[0].sha256 for e in entries} == {sha256_file(official())}
    assert [e.params for e in entries] == [PARAMS[2], PARAMS[3], PARAMS[4]]


def test_distill_squeezesr_from_carn_m(tmp_path):
    from srkd_cli.training import TrainConfig, train

    from PIL import Image

    data = tmp_path / "data"  # two crops: the teacher's whole-image answers cost a fraction of Set5's
    data.mkdir()
    for f in sorted((DATA / "Set5" / "HR").iterdir())[:2]:
        Image.open(f).convert("RGB").crop((0, 0, 96, 96)).save(data / f.name)
    run = train(TrainConfig(arch="squeezesr", scale=2, data=[data], out=tmp_path / "run",
                            teacher=official(), steps=2, batch=2, patch=12, val_every=0, device="cpu", quiet=True,
                            teacher_cache="ram", out_weight=0.5))
    prov = json.loads(load_checkpoint(run.final).metadata["provenance"])
    assert prov["pairs"] == [["S1", "T1"], ["S2", "T2"], ["S3", "T3"]] and prov["adapters"] == []
