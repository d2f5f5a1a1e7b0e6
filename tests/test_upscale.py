"""`srkd upscale` end to end, on images and weights the tests generate (issue 5).

Most CLI tests use a SqueezeSR whose weights make it an exact nearest-neighbour upscaler, so
every output pixel can be predicted; tiling, TTA and alpha tests use models with random weights
rescaled so that their output has real contrast (a flat output would hide any error).
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageCms
from torch import nn

import srkd_cli.atomic
from srkd_cli import inference
from srkd_cli.archs import build_model, detect_arch, get_arch
from srkd_cli.archs.swinir import SwinIR
from srkd_cli.checkpoint import load_checkpoint, save_checkpoint
from srkd_cli.errors import InputError
from srkd_cli.imaging.imresize import imresize
from srkd_cli.imaging.io import read_image
from srkd_cli.inference import Upscaler, blend_weights, tile_spans
from conftest import run_with_peak_rss

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(5)
TINY = dict(n_feats=8, blocks=1, squeeze=2, expand1x1=4)


# ---------------------------------------------------------------- models and images


def nearest_squeezesr(scale: int) -> nn.Module:
    """A SqueezeSR that computes nearest-neighbour upscaling (to float rounding).

    The head copies RGB (minus the mean) into features 0-2, the fire block adds relu(0) = 0,
    and the tail sends half of (head + body) = x - mean to each of the scale^2 sub-pixels.
    """
    m = build_model("squeezesr", scale, **TINY)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for c in range(3):
            m.head.weight[c, c, 1, 1] = 1.0
            m.tail[0].weight[c * scale * scale:(c + 1) * scale * scale, c, 1, 1] = 0.5
    return m


def lively(model: nn.Module, x: torch.Tensor, std: float = 0.15) -> nn.Module:
    """Random weights that keep features alive (He init for conv stacks), then the last conv
    rescaled so that the output on `x` has mean ~0.44 and spread `std` without clipping."""
    if not isinstance(model, SwinIR):  # SwinIR's own init already keeps its features alive
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.weight.numel():
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
    last = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    seen = {}
    hook = last.register_forward_hook(lambda mod, i, o: seen.setdefault("o", o - mod.bias.view(1, -1, 1, 1)))
    with torch.no_grad():
        model(x)
    hook.remove()
    a = std / float(seen["o"].std())
    with torch.no_grad():
        last.weight.mul_(a)
        last.bias.copy_(-a * seen["o"].mean((0, 2, 3)))
    return model.eval()


def upscaler(model, **kw) -> Upscaler:
    spec, cfg, _ = detect_arch(model.state_dict())
    return Upscaler(model, spec, cfg, "cpu", **kw)


def set5_crop(name: str, h: int, w: int, y: int = 30, x: int = 30) -> torch.Tensor:
    a = np.asarray(PILImage.open(REPO / "tests/data/Set5/HR" / f"{name}.png").convert("RGB"))[y:y + h, x:x + w]
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255


def smooth(h: int, w: int, c: int = 3) -> np.ndarray:
    """A smooth random uint8 image: lossy codecs keep it close."""
    small = RNG.integers(0, 256, (h // 6 + 2, w // 6 + 2, c), dtype=np.uint8)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return big.reshape(h, w, c)


def nearest(arr: np.ndarray, s: int) -> np.ndarray:
    return np.repeat(np.repeat(arr, s, 0), s, 1)


def u8(t: torch.Tensor) -> torch.Tensor:
    return (t.clamp(0, 1) * 255).round()


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_bytes(orientation: int = 1) -> bytes:
    exif = PILImage.Exif()
    exif[0x010F] = "SrkdCam"  # Make
    exif[0x0112] = orientation
    return exif.tobytes()


def leftovers(folder: Path) -> list:
    """Temporary files a write left behind."""
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on tiny images: a second thread buys little here and, on a busy machine,
    costs a lot (threads waiting for each other at every operation)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """x2 nearest-neighbour weights file."""
    path = tmp_path_factory.mktemp("w") / "nearest_x2.safetensors"
    save_checkpoint(path, nearest_squeezesr(2), "squeezesr", get_arch("squeezesr").config(**TINY))
    return path


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("w") / "random_x2.safetensors"
    save_checkpoint(path, build_model("squeezesr", 2, **TINY), "squeezesr", get_arch("squeezesr").config(**TINY))
    return path


def assert_one_error(code: int, err: str, *names: str) -> str:
    """A failure reported as error line(s) naming the files, without a traceback."""
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines, err
    for name in names:
        assert any(name in line for line in lines), (name, err)
    return "\n".join(lines)


# ---------------------------------------------------------------- 1. inputs


def _write_inputs(folder: Path) -> dict:
    """One file per kind of input; returns name -> (expected decoded uint array, bits, channels)."""
    folder.mkdir()
    h, w = 18, 22
    rgb, gray = smooth(h, w), smooth(h, w, 1)[:, :, 0]
    alpha = np.linspace(0, 255, h * w).reshape(h, w).astype(np.uint8)
    made = {}
    PILImage.fromarray(rgb).save(folder / "rgb.png")
    made["rgb.png"] = (rgb, 8, 3)
    PILImage.fromarray(gray, "L").save(folder / "gray.png")
    made["gray.png"] = (gray[:, :, None], 8, 1)
    PILImage.fromarray(np.dstack([gray, alpha]), "LA").save(folder / "gray_alpha.png")
    made["gray_alpha.png"] = (np.dstack([gray, alpha]), 8, 2)
    PILImage.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / "rgba.png")
    made["rgba.png"] = (np.dstack([rgb, alpha]), 8, 4)
    pal = PILImage.fromarray(rgb).quantize(16)
    pal.info["transparency"] = 3
    pal.save(folder / "palette.png", transparency=3)
    pal_rgba = np.asarray(pal.convert("RGBA"))
    made["palette.png"] = (pal_rgba, 8, 4)
    rgb16 = (rgb.astype(np.uint16) * 257 + RNG.integers(0, 257, rgb.shape).astype(np.uint16))
    cv2.imwrite(str(folder / "rgb16.png"), rgb16[:, :, ::-1])
    made["rgb16.png"] = (rgb16, 16, 3)
    gray16 = rgb16[:, :, 0].copy()
    cv2.imwrite(str(folder / "gray16.png"), gray16)
    made["gray16.png"] = (gray16[:, :, None], 16, 1)
    cv2.imwrite(str(folder / "rgb16.tif"), rgb16[:, :, ::-1])
    made["rgb16.tif"] = (rgb16, 16, 3)
    PILImage.fromarray(rgb).save(folder / "rgb8.tiff")
    made["rgb8.tiff"] = (rgb, 8, 3)
    PILImage.fromarray(rgb).save(folder / "photo.jpg", quality=98, subsampling=0)
    made["photo.jpg"] = (np.asarray(PILImage.open(folder / "photo.jpg")), 8, 3)
    PILImage.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=98)
    made["cmyk.jpg"] = (np.asarray(PILImage.open(folder / "cmyk.jpg").convert("RGB")), 8, 3)
    PILImage.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / "lossless.webp", lossless=True)
    made["lossless.webp"] = (np.asarray(PILImage.open(folder / "lossless.webp")), 8, 4)
    PILImage.fromarray(rgb).save(folder / "bitmap.bmp")
    made["bitmap.bmp"] = (rgb, 8, 3)
    return made


LOSSY = {".jpg", ".webp"}


def test_every_kind_of_input_gives_the_expected_output(tmp_path, run_cli, weights):
    made = _write_inputs(tmp_path / "in")
    code, out, err = run_cli("upscale", tmp_path / "in", "-w", weights, "-o", tmp_path / "out", "--quality", "100")
    assert code == 0, err
    assert f"upscaled {len(made)} of {len(made)} image(s) x2" in out
    for name, (expected, bits, channels) in made.items():
        src = tmp_path / "in" / name
        dst = tmp_path / "out" / f"{src.stem}_x2{src.suffix}"
        img = read_image(dst)
        assert img.format == read_image(src).format, name
        assert img.size == (2 * expected.shape[1], 2 * expected.shape[0]), name
        assert img.bit_depth == bits, name  # 16-bit PNG and TIFF stay 16-bit
        got_channels = img.rgb.shape[1] + (img.alpha is not None)
        assert got_channels == (3 if name == "cmyk.jpg" else channels), name
        top = 65535 if bits == 16 else 255
        planes = torch.cat([img.rgb] + ([img.alpha] if img.alpha is not None else []), 1)
        got = (planes[0].permute(1, 2, 0).numpy() * top).round()
        want = nearest(expected.astype(np.float64).reshape(*expected.shape[:2], -1), 2)
        diff = np.abs(got - want)
        if name == "lossless.webp":  # WebP is free to change the colour of invisible pixels
            diff = diff * (want[:, :, 3:] > 0)
        if src.suffix in LOSSY and name != "lossless.webp":
            assert diff.mean() < 1.5 and diff.max() <= 24, (name, diff.mean(), diff.max())
        else:
            assert diff.max() <= 1, (name, diff.max())  # exact but for float rounding
    # 16 bits really survive: the low byte is not a copy of the high byte
    out16 = cv2.imread(str(tmp_path / "out" / "rgb16_x2.png"), cv2.IMREAD_UNCHANGED)
    assert out16.dtype == np.uint16 and np.any(out16 % 257 != 0)


def test_folders_recursive_and_globs(tmp_path, run_cli, weights):
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / ".hidden").mkdir()
    for rel in ("a.png", "sub/b.png", "sub/deeper/c.jpg", ".hidden/d.png"):
        PILImage.fromarray(smooth(8, 10)).save(src / rel)
    code, out, err = run_cli("upscale", src, "-r", "-w", weights, "-o", tmp_path / "o1", "-q")
    assert code == 0, err
    made = sorted(str(p.relative_to(tmp_path / "o1")) for p in (tmp_path / "o1").rglob("*.*"))
    assert made == ["a_x2.png", "sub/b_x2.png", "sub/deeper/c_x2.jpg"]
    code, out, err = run_cli("upscale", src, "-w", weights, "-o", tmp_path / "o2", "-q")
    assert code == 0 and [p.name for p in (tmp_path / "o2").rglob("*.*")] == ["a_x2.png"]
    code, out, err = run_cli("upscale", str(src / "sub" / "*.png"), str(src / "a.png"), "-w", weights,
                             "-o", tmp_path / "o3", "-q")
    assert code == 0 and sorted(p.name for p in (tmp_path / "o3").iterdir()) == ["a_x2.png", "b_x2.png"]
    # without -o, each output lands beside its input
    code, out, err = run_cli("upscale", src / "a.png", "-w", weights, "-q")
    assert code == 0 and (src / "a_x2.png").is_file()


def test_exif_orientation_is_applied_and_metadata_carried(tmp_path, run_cli, weights):
    stored = smooth(12, 20)  # landscape as stored; orientation 6 shows it rotated to portrait
    icc = srgb_icc()
    PILImage.fromarray(stored).save(tmp_path / "cam.jpg", quality=98, subsampling=0, exif=exif_bytes(6), icc_profile=icc)
    PILImage.fromarray(stored).save(tmp_path / "meta.png", exif=exif_bytes(1), icc_profile=icc)
    code, out, err = run_cli("upscale", tmp_path / "cam.jpg", tmp_path / "meta.png", "-w", weights, "-o", tmp_path / "out")
    assert code == 0, err
    cam = PILImage.open(tmp_path / "out" / "cam_x2.jpg")
    assert cam.size == (24, 40)  # rotated upright, then doubled
    upright = np.asarray(PILImage.open(tmp_path / "cam.jpg").transpose(PILImage.Transpose.ROTATE_270))
    assert np.abs(np.asarray(cam, np.float64) - nearest(upright, 2)).mean() < 2
    for name in ("cam_x2.jpg", "meta_x2.png"):
        im = PILImage.open(tmp_path / "out" / name)
        assert im.info.get("icc_profile") == icc, name
        exif = im.getexif()
        assert exif.get(0x010F) == "SrkdCam" and exif.get(0x0112, 1) == 1, name


def test_sixteen_bit_png_keeps_icc_and_exif(tmp_path, run_cli, weights):
    icc = srgb_icc()
    PILImage.fromarray(smooth(8, 8)).save(tmp_path / "seed.png", icc_profile=icc, exif=exif_bytes())
    img = read_image(tmp_path / "seed.png")
    from srkd_cli.imaging.io import write_image
    write_image(tmp_path / "deep.png", img.rgb, bit_depth=16, icc_profile=icc, exif=img.exif)
    code, out, err = run_cli("upscale", tmp_path / "deep.png", "-w", weights, "-o", tmp_path / "deep_big.png", "-q")
    assert code == 0, err
    result = read_image(tmp_path / "deep_big.png")
    assert result.bit_depth == 16 and result.icc_profile == icc
    assert PILImage.open(tmp_path / "deep_big.png").getexif().get(0x010F) == "SrkdCam"


def test_alpha_by_model_or_bicubic_and_opaque_stays_opaque(tmp_path, run_cli, weights, random_weights):
    h, w = 16, 20
    alpha = np.where(np.add.outer(np.arange(h) // 3, np.arange(w) // 4) % 2, 230, 20).astype(np.uint8)
    PILImage.fromarray(np.dstack([smooth(h, w), alpha]), "RGBA").save(tmp_path / "cut.png")
    PILImage.fromarray(np.dstack([smooth(h, w), np.full((h, w), 255, np.uint8)]), "RGBA").save(tmp_path / "opaque.png")
    for mode in ("model", "bicubic"):
        code, out, err = run_cli("upscale", tmp_path / "cut.png", "-w", weights, "--alpha", mode,
                                 "-o", tmp_path / f"cut_{mode}.png", "-q")
        assert code == 0, err
        got = np.asarray(PILImage.open(tmp_path / f"cut_{mode}.png"))[:, :, 3].astype(np.float64)
        if mode == "model":  # the nearest-neighbour model
            want = nearest(alpha, 2).astype(np.float64)
        else:
            want = u8(imresize(torch.from_numpy(alpha).float()[None, None] / 255, scale=2))[0, 0].numpy()
        assert np.abs(got - want).max() <= 1, mode
    bic = np.asarray(PILImage.open(tmp_path / "cut_bicubic.png"))[:, :, 3]
    mod = np.asarray(PILImage.open(tmp_path / "cut_model.png"))[:, :, 3]
    assert np.abs(bic.astype(int) - mod).max() > 10  # the two modes really differ
    # random weights do not map an all-1 plane to 1: opaque must stay exactly opaque anyway
    for mode in ("model", "bicubic"):
        code, out, err = run_cli("upscale", tmp_path / "opaque.png", "-w", random_weights, "--alpha", mode,
                                 "-o", tmp_path / f"opaque_{mode}.png", "-q")
        assert code == 0, err
        got = np.asarray(PILImage.open(tmp_path / f"opaque_{mode}.png"))
        assert got.shape == (2 * h, 2 * w, 4) and (got[:, :, 3] == 255).all()
    code, _, err = run_cli("upscale", tmp_path / "cut.png", "-w", weights, "--alpha", "magic", "-o", tmp_path / "x.png")
    assert code == 2 and "--alpha magic" in err


# ---------------------------------------------------------------- 2. outputs


def test_output_file_suffix_format_and_quality(tmp_path, run_cli, weights):
    PILImage.fromarray(smooth(24, 24)).save(tmp_path / "a.png")
    PILImage.fromarray(smooth(24, 24)).save(tmp_path / "b.png")
    code, _, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "-o", tmp_path / "named.png", "-q")
    assert code == 0 and PILImage.open(tmp_path / "named.png").size == (48, 48), err
    code, _, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--suffix", "-big", "-q")
    assert code == 0 and (tmp_path / "a-big.png").is_file(), err
    sizes = {}
    for fmt, q in (("jpg", 95), ("jpg", 30), ("webp", 90)):
        out = tmp_path / f"q{q}"
        code, _, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--format", fmt, "--quality", q, "-o", out, "-q")
        assert code == 0, err
        f = out / f"a_x2.{fmt}"
        assert PILImage.open(f).format == {"jpg": "JPEG", "webp": "WEBP"}[fmt]
        sizes[fmt, q] = f.stat().st_size
    assert sizes["jpg", 30] < sizes["jpg", 95]
    code, _, err = run_cli("upscale", tmp_path / "a.png", tmp_path / "b.png", "-w", weights, "-o", tmp_path / "one.png")
    assert code == 2 and "names one file" in err and not (tmp_path / "one.png").exists()
    code, _, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "-o", tmp_path / "c.png", "--format", "jpg")
    assert code == 2 and "disagree" in err
    code, _, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--format", "gif")
    assert code == 2 and "--format gif" in err


def test_never_overwrites_without_permission_and_never_the_input(tmp_path, run_cli, weights):
    PILImage.fromarray(smooth(10, 10)).save(tmp_path / "a.png")
    target = tmp_path / "a_x2.png"
    target.write_bytes(b"precious")
    code, out, err = run_cli("upscale", tmp_path / "a.png", "-w", weights)
    assert_one_error(code, err, str(target))
    assert "already exists" in err and target.read_bytes() == b"precious"
    code, out, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--overwrite", "-q")
    assert code == 0 and PILImage.open(target).size == (20, 20)
    before = (tmp_path / "a.png").read_bytes()
    for extra in (["--suffix", ""], ["-o", str(tmp_path / "a.png")], ["-o", str(tmp_path), "--suffix", ""]):
        code, out, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--overwrite", *extra)
        assert "would overwrite an input" in assert_one_error(code, err, "a.png"), extra
    assert (tmp_path / "a.png").read_bytes() == before
    # two inputs that would write the same file: the second is refused, not silently lost
    (tmp_path / "x").mkdir()
    PILImage.fromarray(smooth(10, 10)).save(tmp_path / "x" / "a.png")
    code, out, err = run_cli("upscale", tmp_path / "a.png", tmp_path / "x" / "a.png", "-w", weights, "-o", tmp_path / "y")
    assert "also the output of" in assert_one_error(code, err)


def test_batch_reports_bad_files_does_the_rest_and_writes_atomically(tmp_path, run_cli, weights, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        PILImage.fromarray(smooth(10, 12)).save(src / name)
    (src / "bad [red].png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(RNG.integers(0, 256, 64, dtype=np.uint8)))
    real_fsync = srkd_cli.atomic.os.fsync

    def failing_fsync(fd):  # the disk fills up while b's output is written
        if "b_x2" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(srkd_cli.atomic.os, "fsync", failing_fsync)
    code, out, err = run_cli("upscale", src, "-w", weights, "-o", tmp_path / "out", "--json", tmp_path / "r.json")
    lines = assert_one_error(code, err, "bad [red].png", "b_x2.png")  # printed as named, not as markup
    assert code == 1 and len(lines.splitlines()) == 2 and "No space left" in lines
    assert "upscaled 2 of 4 image(s) x2" in out and "2 failed" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x2.png", "c_x2.png"]
    assert leftovers(tmp_path / "out") == []
    records = {Path(r["input"]).name: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert [records[n]["ok"] for n in ("a.png", "b.png", "bad [red].png", "c.png")] == [True, False, False, True]


# ---------------------------------------------------------------- 3. tiling


def _tiling_model(arch: str, x: torch.Tensor) -> nn.Module:
    torch.manual_seed(3)
    if arch == "official":
        return load_checkpoint(REPO / "tests/data/fixtures/swinir_official_2rstb_x2.pth").model
    cfg = {"squeezesr": dict(n_feats=32, squeeze=8, expand1x1=16), "edsr-t": dict(n_feats=16, modules_per_block=2),
           "swinir": dict(blocks=1, depth=2, embed_dim=24, num_heads=4)}[arch]
    return lively(build_model(arch, 3 if arch == "edsr-t" else 2, **cfg), x)


@pytest.mark.parametrize("arch", ["squeezesr", "edsr-t", "swinir", "official"])
def test_tiled_equals_untiled_within_one_grey_level(arch):
    x = set5_crop("butterfly", 45, 59) if arch != "official" else set5_crop("bird", 45, 59, 100, 100)
    model = _tiling_model(arch, x)
    whole = upscaler(model, tile=None)(x)
    assert 0.06 < float(whole.std()) and float(((whole <= 0) | (whole >= 1)).float().mean()) < 0.02  # real contrast
    for tile, overlap in ((32, 12), (40, 16)):
        up = upscaler(model, tile=tile, overlap=overlap)
        assert up.tile_size_for(45, 59) is not None
        tiled = up(x)
        diff = (u8(tiled) - u8(whole)).abs()
        assert float(diff.max()) <= 1, (arch, tile, overlap, float(diff.max()))
        assert float((tiled - whole).abs().mean()) < 2e-4


def test_seams_would_show_without_blending():
    """The check above can fail: tiles cut without overlap, or off SwinIR's window grid."""
    x = set5_crop("butterfly", 45, 59)
    model = _tiling_model("swinir", x)
    whole = u8(upscaler(model, tile=None)(x))
    assert float((u8(upscaler(model, tile=32, overlap=0)(x)) - whole).abs().max()) > 4
    off_grid = upscaler(model, tile=40, overlap=16)
    off_grid.multiple = 1
    assert float((u8(off_grid(x)) - whole).abs().max()) > 1


def test_tile_spans_cover_overlap_and_weights_sum_to_one():
    for n in range(1, 260, 11):
        for tile, overlap, multiple in ((32, 12, 1), (48, 16, 8), (64, 24, 8), (40, 0, 8), (65, 32, 1)):
            spans = tile_spans(n, tile, overlap, multiple)
            assert spans[0][0] == 0 and spans[-1][1] == n
            for (a, b), (c, _) in zip(spans, spans[1:]):
                assert c % multiple == 0 and a < c and b - c >= overlap and b - a == tile
            assert len(spans) == 1 or tile <= spans[-1][1] - spans[-1][0] < tile + multiple
            for s in (2, 3):
                total = torch.zeros(n * s)
                for (a, b), wgt in zip(spans, blend_weights(spans, n, overlap, s)):
                    total[a * s:b * s] += wgt
                assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


@pytest.mark.parametrize("arch", ["squeezesr", "edsr-t", "swinir"])
def test_auto_tile_fits_a_6000x4000_x4_photo_in_the_memory_budget(monkeypatch, arch):
    model = build_model(arch, 4, **({"blocks": 1, "depth": 1} if arch == "swinir" else {}))
    for free in (6 << 30, 12 << 30, 24 << 30):
        monkeypatch.setattr(inference, "available_memory", lambda device, free=free: free)
        up = upscaler(model, tile="auto")
        tile = up.tile_size_for(4000, 6000)
        assert tile is not None and up._min_tile() <= tile <= inference.TILE_MAX["cpu"]
        assert tile % up.multiple == 0
        fixed = up.peak_bytes(4000, 6000, 0)  # input and x4 output buffer: 4.9 GB
        assert 4.6e9 < fixed < up.peak_bytes(4000, 6000, tile) <= fixed + up.memory_budget(fixed) < free
        assert up.tile_size_for(64, 48) is None  # small images run whole
    # a GPU keeps only the tile; the output stays in host memory
    up.device = torch.device("cuda")
    monkeypatch.setattr(inference, "available_memory", lambda device: 2 << 30)
    tile = up.tile_size_for(4000, 6000)
    assert up.peak_bytes(4000, 6000, 0) == 0 and up.peak_bytes(4000, 6000, tile) <= up.memory_budget() < 2 << 30


def test_auto_tile_runs_tiled_when_memory_is_short_and_refuses_an_output_that_cannot_fit(monkeypatch):
    x = set5_crop("head", 40, 52)
    model = _tiling_model("squeezesr", x)
    whole = upscaler(model, tile=None)(x)
    per = inference.bytes_per_input_pixel(get_arch("squeezesr"), get_arch("squeezesr").config(), 2)
    monkeypatch.setattr(inference, "available_memory", lambda device: 40 * 52 * per)  # too little to run whole
    up = upscaler(model, tile="auto", overlap=16)
    assert up.tile_size_for(40, 52) is not None
    assert float((u8(up(x)) - u8(whole)).abs().max()) <= 1
    monkeypatch.setattr(inference, "available_memory", lambda device: 1000)
    with pytest.raises(InputError, match="not enough memory for the x2 output"):
        up(x)


def test_progress_counts_tiles_and_transforms():
    x = set5_crop("head", 45, 59)
    model = _tiling_model("squeezesr", x)
    for tta, per_tile in ((False, 1), (True, 8)):
        seen = []
        up = upscaler(model, tile=32, overlap=12, tta=tta)
        up.progress = lambda done, total: seen.append((done, total))
        up(x)
        tiles = len(tile_spans(45, 32, 12)) * len(tile_spans(59, 32, 12))
        assert seen == [(i + 1, tiles * per_tile) for i in range(tiles * per_tile)]


def test_out_of_memory_halves_the_tile(monkeypatch):
    x = set5_crop("head", 70, 70)
    model = _tiling_model("squeezesr", x)
    ref = upscaler(model, tile=None)(x)
    calls = []

    class Greedy(nn.Module):  # fails like PyTorch does when a piece is too large
        scale = 2

        def forward(self, t):
            calls.append(t.shape[-1])
            if t.shape[-1] > 40:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return model(t)

    spec, cfg, _ = detect_arch(model.state_dict())
    up = Upscaler(Greedy(), spec, cfg, "cpu", tile=None, overlap=16)
    assert float((u8(up(x)) - u8(ref)).abs().max()) <= 1
    assert calls[0] == 70 and max(calls[1:]) <= 40


# ---------------------------------------------------------------- 4. precision


def test_fp16_on_cpu_is_refused_and_bf16_works(tmp_path, run_cli, weights):
    rgb = smooth(12, 12)
    PILImage.fromarray(rgb).save(tmp_path / "a.png")
    code, out, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--device", "cpu", "--precision", "fp16")
    assert code == 2 and "--precision fp16 needs a GPU" in err and "Traceback" not in err
    assert not (tmp_path / "a_x2.png").exists()
    if not torch.cuda.is_available():
        code, out, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--device", "cuda")
        assert code == 2 and "--device cuda: no CUDA device" in assert_one_error(code, err)
    code, out, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--device", "cpu", "--precision", "bf16", "-q")
    assert code == 0, err
    got = np.asarray(PILImage.open(tmp_path / "a_x2.png"), np.float64)
    assert np.abs(got - nearest(rgb, 2)).max() <= 3  # bf16 keeps ~8 bits


class InfWhenHalf(nn.Module):
    """Wraps a model: under autocast (reduced precision) its output overflows, like SwinIR's fp16."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.scale = inner, inner.scale

    def forward(self, x):
        y = self.inner(x)
        if torch.is_autocast_enabled(x.device.type):
            y = y.clone()
            y[..., :3, :3] = float("inf")
            y[..., -1, -1] = float("nan")
        return y


def test_inf_in_reduced_precision_falls_back_to_fp32_never_black(tmp_path, run_cli, weights, monkeypatch):
    from srkd_cli import upscale as api

    real = api.load_model

    def load(*a, **k):
        lm = real(*a, **k)
        lm.model = InfWhenHalf(lm.model)
        return lm

    monkeypatch.setattr(api, "load_model", load)
    rgb = smooth(12, 14)
    PILImage.fromarray(rgb).save(tmp_path / "a.png")
    code, out, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--precision", "bf16", "--device", "cpu")
    assert code == 0 and "warning:" in err and "gave inf/NaN" in err and "Traceback" not in err, err
    got = np.asarray(PILImage.open(tmp_path / "a_x2.png"), np.float64)
    assert np.abs(got - nearest(rgb, 2)).max() <= 1  # the fp32 result, not black or white blotches


def test_inf_even_in_fp32_fails_the_file_instead_of_writing_it(tmp_path, run_cli, weights, monkeypatch):
    from srkd_cli import upscale as api

    real = api.load_model

    class AlwaysNaN(InfWhenHalf):
        def forward(self, x):
            return self.inner(x) * float("nan")

    def load(*a, **k):
        lm = real(*a, **k)
        lm.model = AlwaysNaN(lm.model)
        return lm

    monkeypatch.setattr(api, "load_model", load)
    PILImage.fromarray(smooth(8, 8)).save(tmp_path / "a.png")
    code, out, err = run_cli("upscale", tmp_path / "a.png", "-w", weights)
    assert "inf/NaN" in assert_one_error(code, err, "a.png")
    assert not (tmp_path / "a_x2.png").exists()


# ---------------------------------------------------------------- 5. TTA


def _d8(x: torch.Tensor):
    """The 8 symmetries of the square as (forward, inverse), written independently of srkd."""
    flips = [lambda t: t, lambda t: t.flip(-1)]
    out = []
    for f in flips:
        for r in range(4):
            out.append((lambda t, f=f, r=r: torch.rot90(f(t), r, (-2, -1)),
                        lambda t, f=f, r=r: f(torch.rot90(t, -r, (-2, -1)))))
    return out


@pytest.mark.parametrize("arch", ["squeezesr", "swinir"])
def test_tta_is_the_mean_of_the_eight_transforms(arch):
    x = set5_crop("baby", 37, 45)  # not a multiple of SwinIR's window
    model = _tiling_model(arch, x)
    with torch.no_grad():
        manual = torch.stack([inv(model(fwd(x))) for fwd, inv in _d8(x)]).mean(0).clamp(0, 1)
    plain = upscaler(model, tile=None)(x)
    tta = upscaler(model, tile=None, tta=True)(x)
    assert torch.allclose(tta, manual, atol=1e-5)
    assert float((tta - plain).abs().max()) > 1e-3  # the transforms do change the result
    # equivariance: TTA of a flipped/rotated image is the flipped/rotated TTA
    for fwd, _ in _d8(x)[3:5]:  # a rotation by 270 degrees and a flip
        assert torch.allclose(upscaler(model, tile=None, tta=True)(fwd(x).contiguous()), fwd(tta), atol=1e-5)
    # tiled TTA agrees with untiled TTA like plain tiling does
    tiled = upscaler(model, tile=32, overlap=12, tta=True)(x)
    assert float((u8(tiled) - u8(tta)).abs().max()) <= 1


def test_tta_output_of_a_symmetric_input_is_symmetric():
    q = set5_crop("baby", 12, 12)
    x = torch.cat([torch.cat([q, q.flip(-1)], -1), torch.cat([q.flip(-2), q.flip(-1, -2)], -1)], -2)
    x = (x + x.transpose(-1, -2)) / 2  # symmetric under every flip and rotation
    for fwd, _ in _d8(x):
        assert torch.equal(fwd(x), x)
    model = _tiling_model("swinir", x)
    plain = upscaler(model, tile=None)(x)
    tta = upscaler(model, tile=None, tta=True)(x)
    assert float((plain - plain.flip(-1)).abs().max()) > 1e-3  # the model alone is not symmetric
    for fwd, _ in _d8(x):
        assert torch.allclose(fwd(tta), tta, atol=1e-5)


# ---------------------------------------------------------------- 6. quiet and JSON


def test_quiet_prints_nothing_and_json_records(tmp_path, run_cli, weights):
    PILImage.fromarray(smooth(10, 14)).save(tmp_path / "a.png")
    PILImage.fromarray(smooth(6, 8)).save(tmp_path / "b.png")
    code, out, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "-o", tmp_path / "q", "--quiet",
                             "--tile", "32", "--tile-overlap", "8")
    assert (code, out, err) == (0, "", "")
    code, out, err = run_cli("upscale", tmp_path / "a.png", tmp_path / "b.png", "-w", weights, "-o", tmp_path / "j",
                             "--json", tmp_path / "r.json")
    assert code == 0 and "upscaled 2 of 2" in out
    code, out, err = run_cli("upscale", tmp_path / "a.png", tmp_path / "b.png", "-w", weights, "-o", tmp_path / "k",
                             "--json", "-")
    assert code == 0
    for records in (json.loads((tmp_path / "r.json").read_text()), json.loads(out)):  # stdout is JSON only
        assert [Path(r["input"]).name for r in records] == ["a.png", "b.png"]
        a = records[0]
        assert a["ok"] and a["size_in"] == [14, 10] and a["size_out"] == [28, 20] and a["seconds"] > 0
        assert Path(a["output"]).name == "a_x2.png" and Path(a["output"]).is_file()


# ---------------------------------------------------------------- 7. bad input


def _png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bad_file(kind: str, folder: Path) -> tuple:
    """(path, words the error must contain)."""
    good = folder / "good.png"
    PILImage.fromarray(smooth(40, 40)).save(good)
    if kind == "corrupt":
        p = folder / "corrupt.png"
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
        return p, "not an image"
    if kind == "truncated":
        p = folder / "truncated.png"
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        return p, "truncated"
    if kind == "empty":
        p = folder / "empty.jpg"
        p.write_bytes(b"")
        return p, "empty"
    if kind == "gif":
        p = folder / "anim.gif"
        PILImage.fromarray(smooth(8, 8)).save(p)
        return p, "not an image file"
    if kind == "gif-named-png":
        p = folder / "disguised.png"
        PILImage.fromarray(smooth(8, 8)).save(p, format="GIF")
        return p, "GIF"
    if kind == "bomb":
        p = folder / "bomb.png"
        p.write_bytes(_png_claiming(200_000, 100_000))
        return p, "decompression bomb"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "empty", "gif", "gif-named-png", "bomb"])
def test_a_bad_input_is_one_line_naming_it(tmp_path, run_cli, weights, kind):
    src = tmp_path / "in"
    src.mkdir()
    bad, words = _bad_file(kind, src)
    (src / "good.png").unlink()
    code, out, err = run_cli("upscale", bad, "-w", weights, "-o", tmp_path / "out")
    message = assert_one_error(code, err, bad.name)
    assert code == 1 and words in message and len(message.splitlines()) == 1
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_scale_the_model_cannot_do(tmp_path, run_cli, weights):
    PILImage.fromarray(smooth(8, 8)).save(tmp_path / "a.png")
    code, out, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--scale", "3")
    message = assert_one_error(code, err, weights.name)
    assert code == 2 and "upscales x2, not x3" in message
    code, out, err = run_cli("upscale", tmp_path / "a.png", "--scale", "5")
    assert code == 2 and "--scale 5: use 2, 3 or 4" in assert_one_error(code, err)
    assert list(tmp_path.iterdir()) == [tmp_path / "a.png"]


def test_unwritable_output_folder(tmp_path, run_cli, weights):
    PILImage.fromarray(smooth(8, 8)).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("not a folder")
    code, out, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "-o", tmp_path / "file" / "out")
    assert "cannot create the output folder" in assert_one_error(code, err, str(tmp_path / "file"))
    assert code == 1 and (tmp_path / "file").read_text() == "not a folder"
    if os.geteuid() == 0:
        return  # root writes into read-only folders: the chmod case cannot be shown
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, out, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "-o", locked)
        assert "cannot write" in assert_one_error(code, err, str(locked)) and list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- 8. torchrun


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), SRKD_HOME=str(tmp_path / "home"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "srkd_cli", "upscale", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def test_torchrun_shards_files_across_ranks(tmp_path, weights):
    src = tmp_path / "in"
    src.mkdir()
    names = [f"img{i}.png" for i in range(5)]
    for name in names:
        PILImage.fromarray(smooth(10, 12)).save(src / name)
    (src / "zbad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    run = _torchrun(tmp_path, str(src), "-w", str(weights), "-o", str(tmp_path / "out"), "--json", str(tmp_path / "r.json"))
    assert run.returncode != 0, run.stderr
    records = json.loads((tmp_path / "r.json").read_text())
    assert sorted(Path(r["input"]).name for r in records) == sorted(names + ["zbad.png"])  # each file once
    done = [r for r in records if r["ok"]]
    assert {r["rank"] for r in done} == {0, 1}  # both ranks worked
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(n.replace(".png", "_x2.png") for n in names)
    assert run.stdout.count("upscaled 5 of 6 image(s)") == 1
    assert run.stderr.count("zbad.png") >= 1 and "error: " in run.stderr
    (src / "zbad.png").unlink()
    run = _torchrun(tmp_path, str(src), "-w", str(weights), "-o", str(tmp_path / "out2"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("upscaled 5 of 5 image(s)") == 1
    assert len(list((tmp_path / "out2").iterdir())) == 5


@pytest.mark.parametrize("backend", ["torch-opt", "onnxruntime"])
def test_backends_give_the_torch_output(run_cli, tmp_path, set5, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="the optional extra srkd[onnx] is not installed")
    src = set5 / "LR_bicubic" / "X2" / "birdx2.png"
    outs = {}
    for b in ("torch", backend):
        outs[b] = tmp_path / f"{b}.png"
        code, _, err = run_cli("upscale", src, "-o", outs[b], "--scale", "2", "--backend", b, "--device", "cpu", "--quiet")
        assert code == 0, err
    a, b = (np.asarray(PILImage.open(p)).astype(int) for p in outs.values())
    assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_auto_backend_picks_the_fastest_that_computes_the_same(run_cli, tmp_path, set5, monkeypatch):
    import sys

    from srkd_cli.archs import build_model
    from srkd_cli.backends import pick_backend

    squeeze, swin = build_model("squeezesr", 2), build_model("swinir", 2, blocks=1)
    have_ort = pick_backend(squeeze) == "onnxruntime"
    assert pick_backend(squeeze) == ("onnxruntime" if have_ort else "torch-opt")
    assert pick_backend(squeeze, "cpu", "bf16") == "torch"  # onnxruntime runs fp32 only
    assert pick_backend(squeeze, "cuda") == "torch" and pick_backend(swin) == "torch"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the [onnx] extra were not installed
    assert pick_backend(squeeze) == "torch-opt"
    monkeypatch.undo()
    src = set5 / "LR_bicubic" / "X2" / "birdx2.png"
    code, out, err = run_cli("upscale", src, "-o", tmp_path / "auto.png", "--scale", "2", "--device", "cpu")
    assert code == 0, err
    assert f"({'onnxruntime' if have_ort else 'torch-opt'})" in out


# ---------------------------------------------------------------- 9. hardening (issue 22)


def _srkd_env(tmp_path: Path, **extra: str) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), SRKD_HOME=str(tmp_path / "home"), **extra)


def _srkd_cmd(*args) -> list:
    return [sys.executable, "-m", "srkd_cli", "upscale", *map(str, args)]


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until cond() holds (every 2 ms: a temporary file lives for a fraction of a second)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_mid_write_clean_up_and_exit_128_plus_the_signal(tmp_path, weights, sig):
    """A 2000x2000 output is being deflated (level 9: seconds) into its temporary file when the
    signal comes; the write stage shows on a terminal before it."""
    PILImage.fromarray(smooth(1000, 1000)).save(tmp_path / "k.png")
    out = tmp_path / "out"
    proc = subprocess.Popen(_srkd_cmd(tmp_path / "k.png", "-w", weights, "-o", out, "--png-compression", "9"),
                            env=_srkd_env(tmp_path, TTY_COMPATIBLE="1", COLUMNS="100"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: out.is_dir() and any(p.suffix == ".tmp" for p in out.iterdir()), proc)
    time.sleep(0.5)  # the progress display refreshes 10 times a second
    assert any(p.suffix == ".tmp" for p in out.iterdir()), "the write ended before the signal: make it longer"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"terminated by {signal.Signals(sig).name} after 0 of 1 images" in err and "Traceback" not in err
    assert "writing k_x2.png" in err  # the stage after the tiles bar
    assert list(out.iterdir()) == []  # no temporary file, no partial output


def test_sigint_says_how_far_the_batch_got_and_skip_existing_finishes_it(tmp_path, run_cli, weights):
    src = tmp_path / "in"
    src.mkdir()
    names = [f"img{i}.png" for i in range(8)]
    for name in names:
        PILImage.fromarray(smooth(300, 300)).save(src / name)
    out = tmp_path / "out"
    proc = subprocess.Popen(_srkd_cmd(src, "-w", weights, "-o", out, "--png-compression", "9"), env=_srkd_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "img0_x2.png").exists(), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done = int(re.search(r"interrupted after (\d+) of 8 images; rerun with --skip-existing to finish", err).group(1))
    made = sorted(p.name for p in out.iterdir())
    assert done <= len(made) < 8 and leftovers(out) == []
    code, stdout, err = run_cli("upscale", src, "-w", weights, "-o", out, "--skip-existing", "--json", tmp_path / "r.json")
    assert code == 0, err
    assert f"upscaled {8 - len(made)} of {8 - len(made)} image(s)" in stdout and f"{len(made)} skipped" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(n.replace(".png", "_x2.png") for n in names)
    records = json.loads((tmp_path / "r.json").read_text())
    assert len(records) == 8 and sum(r["skipped"] for r in records) == len(made) and all(r["ok"] for r in records)
    # a plain rerun refuses the outputs that are there, and names the way out
    code, stdout, err = run_cli("upscale", src, "-w", weights, "-o", out)
    assert code == 1 and "upscaled 0 of 8" in stdout and "already exists (use --skip-existing to keep it" in err
    # an output that is there but does not decode is not "done"
    (out / "img3_x2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, _, err = run_cli("upscale", src, "-w", weights, "-o", out, "--skip-existing")
    assert code == 1 and "img3_x2.png: exists but does not decode" in assert_one_error(code, err)
    code, stdout, err = run_cli("upscale", src, "-w", weights, "-o", out, "--skip-existing", "--overwrite")
    assert code == 0 and "upscaled 1 of 1" in stdout and "7 skipped" in stdout, err


def test_a_second_plain_run_leaves_the_first_runs_outputs_alone(tmp_path, run_cli, weights):
    for name in ("a.png", "b.jpg"):
        PILImage.fromarray(smooth(10, 12)).save(tmp_path / name)
    code, _, err = run_cli("upscale", tmp_path, "-w", weights)
    assert code == 0 and err == "", err  # no lone empty line on stderr either
    for args in ([tmp_path], [str(tmp_path / "*.*")]):
        code, out, err = run_cli("upscale", *args, "-w", weights)
        assert "left out 2 earlier output(s) of srkd" in err and "a_x2.png" in err, err
        assert code == 1 and "upscaled 0 of 2" in out and "--skip-existing" in err  # a.png and b.jpg are done
        code, out, err = run_cli("upscale", *args, "-w", weights, "--skip-existing")
        assert code == 0 and "2 skipped" in out, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_x2.png", "b.jpg", "b_x2.jpg"]
    # named, an earlier output is upscaled like any file
    code, _, err = run_cli("upscale", tmp_path / "a_x2.png", "-w", weights, "-q")
    assert code == 0 and (tmp_path / "a_x2_x2.png").is_file(), err


@pytest.mark.parametrize("suffix", ["/../../evil", "../evil", "_x2/sub", "a\\b", "a:b", "x\x01"])
def test_a_suffix_must_stay_inside_the_file_name(tmp_path, run_cli, weights, suffix):
    (tmp_path / "d1" / "d2").mkdir(parents=True)
    PILImage.fromarray(smooth(8, 8)).save(tmp_path / "d1" / "d2" / "a.png")
    code, _, err = run_cli("upscale", tmp_path / "d1" / "d2" / "a.png", "-w", weights, "--suffix", suffix)
    assert code == 2 and "--suffix" in assert_one_error(code, err) and "part of a file name" in err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["d1", "d1/d2", "d1/d2/a.png"]


def test_stdin_to_stdout_in_a_pipeline(tmp_path, run_cli, weights):
    rgb = smooth(14, 18)
    PILImage.fromarray(rgb).save(tmp_path / "in.png")
    cmd = " ".join(_srkd_cmd("-", "-o", "-", "--format", "png", "-w", weights))
    run = subprocess.run(f"cat in.png | {cmd} > out.png", shell=True, cwd=tmp_path, env=_srkd_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "upscaled 1 of 1 image(s) x2" in run.stderr  # the summary stays off stdout
    got = PILImage.open(tmp_path / "out.png")
    assert got.format == "PNG" and np.abs(np.asarray(got, np.float64) - nearest(rgb, 2)).max() <= 1
    for args, says in ((["-o", "-"], "give --format"), (["-o", "-", "--format", "png", "--json", "-"], "both want stdout"),
                       (["-o", tmp_path / "dir"], "input -: give -o FILE or -o -")):
        src = "-" if "input -" in says else tmp_path / "in.png"
        code, out, err = run_cli("upscale", src, "-w", weights, *args)
        assert code == 2 and says in assert_one_error(code, err) and out == "", (args, err)


def test_an_output_named_like_an_image_srkd_cannot_write_is_refused(tmp_path, run_cli, weights):
    PILImage.fromarray(smooth(8, 8)).save(tmp_path / "a.png")
    for name, says in (("out.gif", "cannot write GIF"), ("out.xyz", ".xyz is not an image format srkd writes")):
        code, _, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "-o", tmp_path / name)
        assert code == 2 and says in assert_one_error(code, err) and not (tmp_path / name).exists()
    for folder in ("plain", "out.gif/"):  # no suffix, or a trailing slash: a folder
        code, _, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "-o", f"{tmp_path}/{folder}", "-q")
        assert code == 0 and (tmp_path / folder.rstrip("/") / "a_x2.png").is_file(), err


def _palette_png(path: Path, width: int, height: int) -> None:
    """An RGB image (1-bit palette) of width x height: 1/24 of 8-bit RGB's bytes, so even
    13000 x 13000 deflates in a tenth of a second, to 20 KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0))
                     + chunk(b"PLTE", bytes([30, 60, 90, 200, 100, 50])) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and ru_maxrss in KiB are Linux's")
def test_memory_is_checked_from_the_header_before_decoding(tmp_path):
    """13000 x 13000 at x4: the output alone needs 32 GB. Refused from the header, the run peaks
    at the interpreter's own ~0.35 GB (6.1 GB when the check came after decoding). The address
    space is limited to 8 GB so that a machine with 64 GB free refuses it too."""
    _palette_png(tmp_path / "huge.png", 13000, 13000)
    assert (tmp_path / "huge.png").stat().st_size < 100_000

    proc, peak = run_with_peak_rss(_srkd_cmd(tmp_path / "huge.png", "--scale", "4", "-o", tmp_path / "big.png"),
                                   _srkd_env(tmp_path), address_space=8 << 30)
    err = proc.stderr
    assert proc.returncode == 1 and "52000x52000" in err and "refused before decoding" in err, err
    assert peak < 1_000_000, peak  # KiB: decoding alone would take 2.5 GB
    assert not (tmp_path / "big.png").exists()


def test_unknown_model_names_are_echoed_as_typed_with_close_names(tmp_path, run_cli, set5):
    PILImage.fromarray(smooth(8, 8)).save(tmp_path / "a.png")
    code, _, err = run_cli("upscale", tmp_path / "a.png", "--model", "swinir4-x5", "--scale", "2")
    msg = assert_one_error(code, err)
    assert "unknown model 'swinir4-x5';" in msg and "did you mean swinir4-x2" in msg and "x5-x2" not in msg
    code, _, err = run_cli("eval", "--data", set5, "--model", "squeezesr-kd-x5", "--scale", "2")
    msg = assert_one_error(code, err)
    assert "unknown model 'squeezesr-kd-x5';" in msg and "did you mean squeezesr-kd-x2" in msg, msg
    code, _, err = run_cli("upscale", tmp_path / "a.png", "-n", "RealESRGAN_x4plus")
    assert "Real-ESRGAN's models are not in srkd's zoo" in assert_one_error(code, err)


def test_small_things_tile_minimum_quality_pages_and_globs(tmp_path, run_cli, weights):
    PILImage.fromarray(smooth(70, 70)).save(tmp_path / "a.png")
    code, _, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--tile", "32")
    assert code == 2 and "the smallest tile here is 65" in assert_one_error(code, err)
    code, _, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--tile", "65", "-o", tmp_path / "t.png")
    assert code == 0, err  # the minimum stated works
    # --quality with PNG does nothing: say so; with JPEG it is used
    code, _, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--quality", "80", "-o", tmp_path / "q.png")
    assert code == 0 and "warning: --quality 80 does nothing for PNG output" in err
    code, _, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, "--quality", "80", "-o", tmp_path / "q.jpg")
    assert code == 0 and "warning" not in err
    # a multi-page TIFF: only the first page is upscaled, and that is said
    pages = [PILImage.fromarray(smooth(10, 12)) for _ in range(3)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    code, _, err = run_cli("upscale", tmp_path / "pages.tif", "-w", weights, "-o", tmp_path / "p.tif")
    assert code == 0 and "pages.tif: 3 pages; only the first is upscaled (pages 2-3 are dropped)" in err
    assert getattr(PILImage.open(tmp_path / "p.tif"), "n_frames", 1) == 1
    # a pattern that matches nothing is no image: an error line, not a failed image
    code, out, err = run_cli("upscale", tmp_path / "a.png", str(tmp_path / "none" / "*.png"), "-w", weights, "-o", tmp_path / "g")
    assert code == 1 and "upscaled 1 of 1 image(s)" in out and "failed" not in out
    assert "the pattern matches no images" in assert_one_error(code, err)
    (tmp_path / "deep" / "er" / "est").mkdir(parents=True)
    PILImage.fromarray(smooth(8, 8)).save(tmp_path / "deep" / "er" / "est" / "c.png")
    code, out, err = run_cli("upscale", str(tmp_path / "deep" / "**" / "*.png"), "-w", weights, "-o", tmp_path / "g")
    assert code == 2 and "only with -r/--recursive" in assert_one_error(code, err) and out == ""
    code, out, err = run_cli("upscale", str(tmp_path / "deep" / "**" / "*.png"), "-r", "-w", weights, "-o", tmp_path / "g")
    assert code == 0 and (tmp_path / "g" / "c_x2.png").is_file(), err


def test_real_esrgan_spellings(tmp_path, run_cli, weights):
    h, w = 20, 26
    rgb, alpha = smooth(h, w), smooth(h, w, 1)[:, :, 0]
    PILImage.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    # -i, -t, --fp32, --ext, and -s 1.5: the x2 model, then Lanczos down to 1.5x (alpha too)
    code, out, err = run_cli("upscale", "-i", tmp_path / "a.png", "-w", weights, "-t", "0", "--fp32", "--ext", "png",
                             "-s", "1.5", "-o", tmp_path / "out")
    assert code == 0 and "x1.5 with nearest_x2.safetensors" in out, err
    got = PILImage.open(tmp_path / "out" / "a_x1.5.png")
    assert got.size == (int(w * 1.5), int(h * 1.5)) and got.mode == "RGBA"
    want = np.dstack([np.asarray(PILImage.fromarray(plane).resize(got.size, PILImage.Resampling.LANCZOS))
                      for plane in (rgb, alpha)])  # colour and alpha each on their own, not premultiplied
    diff = np.abs(np.asarray(got, np.float64) - want)
    assert diff.mean() < 2 and diff.max() < 16, (diff.mean(), diff.max())  # nearest decimation: 7 and 48
    # a family takes the next scale up; a file must reach the scale
    code, out, err = run_cli("upscale", tmp_path / "a.png", "-n", "squeezesr-kd", "--outscale", "3.5", "-o", tmp_path / "b.png")
    assert code == 0 and "x3.5 with squeezesr-kd-x4" in out, err
    assert PILImage.open(tmp_path / "b.png").size == (int(w * 3.5), int(h * 3.5))
    for args, says in ((["-s", "3.5"], "upscales x2, less than that"), (["-s", "4.5"], "between 1 and 4"),
                       (["-s", "big"], "--scale big"), (["--fp32", "--precision", "bf16"], "disagree")):
        code, _, err = run_cli("upscale", tmp_path / "a.png", "-w", weights, *args, "-o", tmp_path / "x.png")
        assert code == 2 and says in assert_one_error(code, err), (args, err)
