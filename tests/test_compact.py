"""Real-ESRGAN Compact (SRVGGNetCompact): the BasicSR reference fixture is reproduced (tensors and
`srkd upscale`, whole and tiled), a file without PReLU slopes says what it assumed and takes
`--set act=...`, and the fast paths (onnxruntime, exact pieces, int8) run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATA
from srkd_cli.archs import build_model, detect_arch
from srkd_cli.checkpoint import load_checkpoint

FIX = DATA / "fixtures"
WEIGHTS = FIX / "compact_official_x4.pth"
BIRD = DATA / "Set5" / "LR_bicubic" / "X4" / "birdx4.png"


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=int)


def _upscale(run_cli, src: Path, out: Path, weights: Path, *extra: str):
    code, _, err = run_cli("upscale", src, "-o", out, "--weights", weights, "--device", "cpu", "--overwrite", *extra)
    assert code == 0, err
    return _png(out), err


def test_reference_output_to_1e5():
    io = torch.load(FIX / "compact_official_x4_io.pt", weights_only=True)
    lm = load_checkpoint(WEIGHTS)
    assert (lm.spec.name, lm.scale, lm.config) == ("compact", 4, {"n_feats": 16, "convs": 4, "act": "prelu"})
    assert lm.notes == []  # PReLU slopes are in the file: nothing assumed
    with torch.no_grad():
        out = lm.model(io["input"])
    assert (out - io["output"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_upscale_reproduces_the_reference_png_whole_and_tiled(run_cli, tmp_path, backend):
    got, _ = _upscale(run_cli, FIX / "compact_official_x4_in.png", tmp_path / "whole.png", WEIGHTS, "--backend", backend)
    assert np.abs(got - _png(FIX / "compact_official_x4_expected.png")).max() <= 1
    # The 23x19 fixture is under the smallest tile: tiles are checked on a 72x72 image, at the
    # default overlap (32 here: 4x the receptive field of 6) and a smaller one.
    whole, _ = _upscale(run_cli, BIRD, tmp_path / "w.png", WEIGHTS, "--backend", "torch", "--tile", "none")
    for tile in ("65", "32 --tile-overlap 8"):
        tiled, _ = _upscale(run_cli, BIRD, tmp_path / "t.png", WEIGHTS, "--backend", backend, "--tile", *tile.split())
        assert np.abs(tiled - whole).max() <= 1


def _plain(act: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("compact", 2, n_feats=8, convs=3, act=act).eval()
    with torch.no_grad():  # a bias below zero, so ReLU and LeakyReLU differ
        for layer in model.body[:-1]:
            if isinstance(layer, torch.nn.Conv2d):
                layer.bias.sub_(0.2)
    return model


def test_a_file_without_prelu_says_what_it_assumed_and_takes_set_act(run_cli, tmp_path):
    leaky = _plain("leakyrelu")
    path = tmp_path / "2x-compact.pth"
    torch.save({"params": leaky.state_dict()}, path)
    lm = load_checkpoint(path)
    assert lm.config["act"] == "relu" and len(lm.notes) == 1 and "act=relu" in lm.notes[0]
    given = load_checkpoint(path, overrides={"act": "leakyrelu"})
    assert given.config["act"] == "leakyrelu" and given.notes == []
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        assert torch.equal(given.model(x), leaky(x))
        assert not torch.equal(lm.model(x), leaky(x))

    src = DATA / "Set5" / "LR_bicubic" / "X2" / "birdx2.png"
    _, err = _upscale(run_cli, src, tmp_path / "a.png", path)
    assert "warning:" in err and "assumed act=relu" in err and "--set act=" in err
    _, err = _upscale(run_cli, src, tmp_path / "b.png", path, "--set", "act=leakyrelu")
    assert "warning" not in err
    code, _, err = run_cli("upscale", src, "-o", tmp_path / "c.png", "--weights", path, "--set", "act=swish")
    assert code != 0 and "act" in err and "prelu, relu, leakyrelu" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("upscale", src, "-o", tmp_path / "c.png", "--weights", path, "--set", "actrelu")
    assert code != 0 and "KEY=VALUE" in err


def test_info_reports_the_assumption(tmp_path):
    path = tmp_path / "c.pth"
    torch.save(_plain("relu").state_dict(), path)
    r = subprocess.run([sys.executable, "-m", "srkd_cli", "info", path, "--json"], capture_output=True, text=True,
                       timeout=120)
    got = json.loads(r.stdout)
    assert r.returncode == 0 and got["arch"] == "compact" and got["scale"] == 2 and got["runs"]
    assert got["config"] == {"n_feats": 8, "convs": 3, "act": "relu"} and "no PReLU" in got["layout"]
    assert len(got["assumed"]) == 1 and got["receptive_field"] == 5


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_shapes_features_and_detection(scale):
    torch.manual_seed(0)
    for act in ("prelu", "relu"):
        model = build_model("compact", scale, n_feats=8, convs=6, act=act).eval()
        x = torch.rand(2, 3, 7, 10)
        with torch.no_grad():
            out, feats = model.forward_with_features(x, model.feature_names)
            assert torch.equal(out, model(x))
        assert out.shape == (2, 3, 7 * scale, 10 * scale) and set(feats) == {"T1", "T2", "T3"}
        spec, cfg, s = detect_arch(model.state_dict())
        assert (spec.name, s, cfg) == ("compact", scale, {"n_feats": 8, "convs": 6, "act": act})


def test_fast_paths_compute_the_same_function():
    from srkd_cli.backends import pick_backend, prepare

    model = load_checkpoint(WEIGHTS).model
    assert pick_backend(model, "cpu", "fp32") == "onnxruntime"
    x = torch.rand(1, 3, 70, 90)
    with torch.no_grad():
        ref = model(x)
        for backend in ("torch-opt", "onnxruntime"):
            for threads in (1, 2):  # 2: exact pieces on two sessions
                got = prepare(model, backend, "cpu", threads=threads)(x)
                assert (got - ref).abs().max().item() < 1e-4, (backend, threads)


def test_int8_path_is_close(int8_env):
    from srkd_cli.backends import prepare
    from srkd_cli.imaging.io import read_uint8

    model = load_checkpoint(WEIGHTS).model
    lr = read_uint8(BIRD)
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        ref = model(x).clamp(0, 1)
        got = prepare(model, "onnxruntime", "cpu", threads=1, precision="int8")(x).clamp(0, 1)
    assert got.shape == ref.shape
    assert ((got - ref).abs().mean() * 255).item() < 2.0


def test_the_whole_pipeline_applies(tmp_path, run_cli):
    """16-bit, alpha and grey inputs keep their kind, and stdin to stdout works, with a foreign file."""
    import cv2

    from srkd_cli.imaging.io import read_image

    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    rgb16 = rng.integers(0, 65536, (20, 24, 3), dtype=np.uint16)
    cv2.imwrite(str(src / "rgb16.png"), rgb16)
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(src / "rgba.png")
    Image.fromarray(rgba[:, :, 0]).save(src / "grey.png")
    code, _, err = run_cli("upscale", src, "-o", tmp_path / "out", "-w", WEIGHTS, "-q")
    assert code == 0, err
    for name, bits, alpha in (("rgb16", 16, False), ("rgba", 8, True), ("grey", 8, False)):
        img = read_image(tmp_path / "out" / f"{name}_x4.png")
        assert (img.size, img.bit_depth, img.alpha is not None) == ((96, 80), bits, alpha), name
    r = subprocess.run([sys.executable, "-m", "srkd_cli", "upscale", "-", "-o", "-", "--format", "png", "-w", WEIGHTS],
                       input=(src / "rgba.png").read_bytes(), capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith(b"\x89PNG"), r.stderr
