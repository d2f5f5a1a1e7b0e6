"""ESRGAN (RRDBNet): the BasicSR reference fixture is reproduced (tensors and `srkd upscale`, whole
and tiled), and the other layouts community files come in load from their tensors alone and
compute the same function: the original ESRGAN keys, the ESRGAN repository's keys, Real-ESRGAN's
x2 pixel-unshuffle input, one-stage x2, other sizes; `srkd info` says what each is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import DATA
from srkd_cli.archs import build_model, count_params, detect_arch
from srkd_cli.checkpoint import load_checkpoint
from srkd_cli.errors import ConfigError

FIX = DATA / "fixtures"
WEIGHTS = FIX / "esrgan_official_x4.pth"
SRKD = [sys.executable, "-m", "srkd_cli"]


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=int)


def _upscale(run_cli, src: Path, out: Path, weights: Path, *extra: str) -> np.ndarray:
    code, _, err = run_cli("upscale", src, "-o", out, "--weights", weights, "--device", "cpu", "--backend", "torch",
                           "--quiet", "--overwrite", *extra)
    assert code == 0, err
    return _png(out)


def _bare(path: Path):
    return next(iter(torch.load(path, weights_only=True).values()))


def test_reference_output_to_1e5():
    io = torch.load(FIX / "esrgan_official_x4_io.pt", weights_only=True)
    lm = load_checkpoint(WEIGHTS)
    assert (lm.spec.name, lm.scale) == ("esrgan", 4)
    assert lm.config == {"n_feats": 32, "blocks": 2, "growth": 16, "unshuffle": 1}
    with torch.no_grad():
        out = lm.model(io["input"])
    assert (out - io["output"]).abs().max().item() < 1e-5


def test_upscale_reproduces_the_reference_png_whole_and_tiled(run_cli, tmp_path):
    got = _upscale(run_cli, FIX / "esrgan_official_x4_in.png", tmp_path / "whole.png", WEIGHTS)
    assert np.abs(got - _png(FIX / "esrgan_official_x4_expected.png")).max() <= 1
    # The fixture's 22x17 input is under the smallest tile: tiles are checked on a 128x128 image
    # against the whole-image run of the same (reference-exact) model, at the default overlap
    # (4x the receptive field, capped at 64, and at what the tile leaves room for).
    src = DATA / "Set5" / "LR_bicubic" / "X4" / "babyx4.png"
    whole = _upscale(run_cli, src, tmp_path / "w.png", WEIGHTS, "--tile", "none")
    for tile in ("65", "100"):
        tiled = _upscale(run_cli, src, tmp_path / f"t{tile}.png", WEIGHTS, "--tile", tile)
        assert np.abs(tiled - whole).max() <= 1


def _to_original_layout(sd):
    """BasicSR names -> the original ESRGAN `model.N` sequential names (written here from the layout)."""
    blocks = len({k.split(".")[1] for k in sd if k.startswith("body.")})
    ups = sorted(k.split(".")[0] for k in sd if k.startswith("conv_up") and k.endswith(".weight"))
    # model.0 conv, model.1 trunk, then per stage [upsample, conv, act], then [conv, act], then the last conv
    top = {"conv_first": "model.0"}
    i = 2
    for name in ups:
        top[name] = f"model.{i + 1}"
        i += 3
    top["conv_hr"], top["conv_last"] = f"model.{i}", f"model.{i + 2}"
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "body":
            out[f"model.1.sub.{parts[1]}.RDB{parts[2][3:]}.{parts[3]}.0.{parts[4]}"] = v
        elif parts[0] == "conv_body":
            out[f"model.1.sub.{blocks}.{parts[1]}"] = v
        else:
            out[f"{top[parts[0]]}.{parts[1]}"] = v
    return out


def _to_esrgan_repo_layout(sd):
    names = {"conv_body": "trunk_conv", "conv_hr": "HRconv", "conv_up1": "upconv1", "conv_up2": "upconv2"}
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "body":
            out[f"RRDB_trunk.{parts[1]}.RDB{parts[2][3:]}.{parts[3]}.{parts[4]}"] = v
        else:
            out[".".join([names.get(parts[0], parts[0]), *parts[1:]])] = v
    return out


def _bare_basicsr(sd):
    return sd


def _params_wrapped_dataparallel(sd):
    return {"params": {f"module.{k}": v for k, v in sd.items()}}


@pytest.mark.parametrize("convert", [_to_original_layout, _to_esrgan_repo_layout, _bare_basicsr,
                                     _params_wrapped_dataparallel])
def test_other_key_layouts_load_as_the_same_model(convert, tmp_path):
    sd = _bare(WEIGHTS)
    path = tmp_path / "model.pth"
    torch.save(convert(sd), path)
    io = torch.load(FIX / "esrgan_official_x4_io.pt", weights_only=True)
    lm = load_checkpoint(path)
    assert (lm.spec.name, lm.scale, lm.config["blocks"]) == ("esrgan", 4, 2)
    with torch.no_grad():
        assert (lm.model(io["input"]) - io["output"]).abs().max().item() < 1e-5


def _save(model, path: Path, wrapper="params_ema", convert=None) -> Path:
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({wrapper: convert(sd) if convert else sd} if wrapper else (convert(sd) if convert else sd), path)
    return path


REAL_X2 = dict(n_feats=12, blocks=3, growth=8, unshuffle=2)  # Real-ESRGAN x2: conv_first takes 12 channels
OLD_X2 = dict(n_feats=8, blocks=1, growth=4, unshuffle=1)  # old ESRGAN x2: one upsampling stage
WIDER = dict(n_feats=24, blocks=3, growth=8, unshuffle=1)


@pytest.mark.parametrize("cfg,scale,convert", [
    (REAL_X2, 2, None), (OLD_X2, 2, None), (OLD_X2, 2, _to_original_layout), (WIDER, 4, None),
    (WIDER, 4, _to_original_layout), (WIDER, 4, _to_esrgan_repo_layout),
])
def test_made_layouts_are_detected_and_compute_the_same_function(cfg, scale, convert, tmp_path):
    torch.manual_seed(0)
    model = build_model("esrgan", scale, **cfg).eval()
    lm = load_checkpoint(_save(model, tmp_path / "m.pth", convert=convert))
    assert (lm.scale, lm.config) == (scale, cfg)
    assert count_params(lm.model) == count_params(model)
    for h, w in ((9, 13), (10, 12), (1, 5)):  # odd sizes are padded for the unshuffle, then cropped
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            a, b = model(x), lm.model(x)
        assert a.shape == (1, 3, h * scale, w * scale)
        assert torch.equal(a, b)


def test_unshuffle_input_is_reflect_padded_then_cropped():
    torch.manual_seed(0)
    model = build_model("esrgan", 2, n_feats=8, blocks=1, growth=4, unshuffle=2).eval()
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        got = model(x)
        padded = model(F.pad(x, (0, 1, 0, 1), mode="reflect"))
    assert torch.equal(got, padded[..., :18, :22])


def test_unshuffle_model_tiles_and_runs_on_onnxruntime(run_cli, tmp_path):
    from srkd_cli.backends import prepare

    torch.manual_seed(0)
    model = build_model("esrgan", 2, n_feats=8, blocks=1, growth=4, unshuffle=2).eval()
    with torch.no_grad():  # weights scaled so the output has contrast
        model.conv_last.weight.mul_(5)
        model.conv_last.bias.fill_(0.5)
    weights = _save(model, tmp_path / "x2.pth")
    runner = prepare(model, "onnxruntime", "cpu")
    for h, w in ((15, 17), (16, 18)):
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            assert (runner(x) - model(x)).abs().max().item() < 1e-4
    src = DATA / "Set5" / "LR_bicubic" / "X2" / "birdx2.png"
    whole = _upscale(run_cli, src, tmp_path / "w.png", weights, "--tile", "none")
    tiled = _upscale(run_cli, src, tmp_path / "t.png", weights, "--tile", "81")  # odd: the tile keeps to the grid
    assert np.abs(tiled - whole).max() <= 1


def test_shapes_features_and_scales():
    torch.manual_seed(0)
    for scale, u in ((4, 1), (2, 2), (2, 1)):
        model = build_model("esrgan", scale, n_feats=8, blocks=4, growth=4, unshuffle=u).eval()
        x = torch.rand(2, 3, 7, 10)
        with torch.no_grad():
            out, feats = model.forward_with_features(x, model.feature_names)
            assert torch.equal(out, model(x))
        assert out.shape == (2, 3, 7 * scale, 10 * scale)
        assert torch.equal(feats["T3"], feats["B4"])
        spec, cfg, s = detect_arch(model.state_dict())
        assert (spec.name, s, cfg["unshuffle"]) == ("esrgan", scale, u)
    with pytest.raises(ConfigError, match="x3"):
        build_model("esrgan", 3)


def _srkd(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*SRKD, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_info_says_what_a_file_is(tmp_path):
    r = _srkd("info", WEIGHTS)
    assert r.returncode == 0, r.stderr
    assert "esrgan" in r.stdout and "x4" in r.stdout and "398,755" in r.stdout
    assert "BasicSR" in r.stdout and "params_ema" in r.stdout and "yes" in r.stdout
    old = tmp_path / "old.pth"
    torch.save(_to_original_layout(_bare(WEIGHTS)), old)
    r = _srkd("info", old, "--json")
    got = json.loads(r.stdout)
    assert r.returncode == 0 and got["arch"] == "esrgan" and got["runs"] and "original ESRGAN" in got["layout"]
    assert got["config"] == {"n_feats": 32, "blocks": 2, "growth": 16, "unshuffle": 1}


def test_x1_and_unknown_files_are_one_line_errors(tmp_path, run_cli):
    torch.manual_seed(0)
    x1 = tmp_path / "1x.pth"
    m = build_model("esrgan", 2, n_feats=8, blocks=1, growth=4, unshuffle=2)
    sd = m.state_dict()
    sd["conv_first.weight"] = torch.zeros(8, 48, 3, 3)  # Real-ESRGAN's x1: unshuffle by 4, then x4
    torch.save({"params": sd}, x1)
    r = _srkd("info", x1)
    assert r.returncode == 1 and "x1" in r.stdout and "no:" in r.stdout
    bird = DATA / "Set5" / "LR_bicubic" / "X4" / "birdx4.png"
    code, _, err = run_cli("upscale", bird, "-o", tmp_path / "o.png", "--weights", x1)
    assert code != 0 and "upscales x1" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    odd = tmp_path / "odd.pth"
    sd["conv_first.weight"] = torch.zeros(8, 4, 3, 3)
    torch.save(sd, odd)
    code, _, err = run_cli("upscale", bird, "-o", tmp_path / "p.png", "--weights", odd)
    assert code != 0 and "4 channels" in err and len(err.strip().splitlines()) == 1
    junk = tmp_path / "junk.pth"
    torch.save({"a.weight": torch.zeros(3)}, junk)
    code, _, err = run_cli("info", junk)
    assert code == 2 and "not a model srkd knows" in err and len(err.strip().splitlines()) == 1
