"""PSNR / SSIM / Y conversion against hand values, scikit-image, and the SPEC's bicubic figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srkd_cli.imaging.color import rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb
from srkd_cli.imaging.imresize import imresize
from srkd_cli.metrics import psnr, ssim, to_uint8

DATA = Path(__file__).parent / "data"
SHARED = Path("/work/shared/data/benchmark")


def _degraded(img: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = img.astype(np.int16) + rng.integers(-12, 13, img.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


# --- hand-computed values ----------------------------------------------------


def test_psnr_hand_values() -> None:
    a = np.full((4, 4), 100, dtype=np.uint8)
    b = a.copy()
    b[0, :] += 2  # four pixels off by 2: MSE = 4 * 2**2 / 16 = 1
    assert psnr(a, b, 0, y_only=False) == pytest.approx(20 * math.log10(255), abs=1e-12)  # 48.1308 dB

    rgb_a = np.full((4, 4, 3), 50, dtype=np.uint8)
    rgb_b = rgb_a.copy()
    rgb_b[..., 1] += 3  # one channel of three off by 3: MSE = 9 / 3 = 3
    assert psnr(rgb_a, rgb_b, 0, y_only=False) == pytest.approx(10 * math.log10(255**2 / 3), abs=1e-12)

    # Y: all-black vs pure red (255, 0, 0): Y differs by 65.481 everywhere.
    black = np.zeros((4, 4, 3), dtype=np.uint8)
    red = black.copy()
    red[..., 0] = 255
    assert psnr(black, red, 0, y_only=True) == pytest.approx(20 * math.log10(255 / 65.481), abs=1e-12)


def test_border_crop_and_identical_images() -> None:
    a = np.full((6, 6, 3), 128, dtype=np.uint8)
    b = a.copy()
    b[0, :] = 0
    b[:, -1] = 255
    assert psnr(a, b, 1, y_only=True) == float("inf")
    assert math.isfinite(psnr(a, b, 0, y_only=True))
    img = np.array(Image.open(DATA / "Set5" / "HR" / "bird.png"))
    assert psnr(img, img, 2, y_only=False) == float("inf")
    assert ssim(img, img, 2, y_only=True) == pytest.approx(1.0, abs=1e-12)
    assert ssim(img, img, 2, y_only=False) == pytest.approx(1.0, abs=1e-12)
    assert ssim(img, _degraded(img), 2, y_only=True) < 0.95


def test_y_of_pure_colours() -> None:
    colours = np.array(
        [[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.float64
    )
    # 16 + coefficient * 255 / 255 for the lit channels.
    expected = [16.0, 16 + 65.481 + 128.553 + 24.966, 16 + 65.481, 16 + 128.553, 16 + 24.966]
    y = rgb_to_y(colours)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y[0], expected, atol=1e-12)
    assert y[0, 1] == pytest.approx(235.0, abs=1e-12)


def test_ycbcr_tensor_round_trip_and_values() -> None:
    red = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
    ycc = rgb_to_ycbcr(red)[0, :, 0, 0] * 255
    # MATLAB rgb2ycbcr([1 0 0]) * 255 = [16 + 65.481, 128 - 37.797, 128 + 112]
    np.testing.assert_allclose(ycc.numpy(), [81.481, 90.203, 240.0], atol=1e-12)
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-12)
    # The tensor Y agrees with the numpy Y the metrics use.
    rgb = torch.rand(3, 4, 4, dtype=torch.float64)
    y_np = rgb_to_y(rgb.permute(1, 2, 0).numpy() * 255)
    np.testing.assert_allclose(rgb_to_ycbcr(rgb)[0].numpy() * 255, y_np, atol=1e-10)


def test_grey_counts_as_equal_rgb() -> None:
    grey = np.array(Image.open(DATA / "Set5" / "HR" / "head.png").convert("L"))
    other = _degraded(grey)
    as_rgb = np.repeat(grey[..., None], 3, axis=2)
    other_rgb = np.repeat(other[..., None], 3, axis=2)
    for y_only in (True, False):
        assert psnr(grey, other, 3, y_only) == pytest.approx(psnr(as_rgb, other_rgb, 3, y_only), abs=1e-10)
        assert ssim(grey, other, 3, y_only) == pytest.approx(ssim(as_rgb, other_rgb, 3, y_only), abs=1e-12)
    # HxW and HxWx1 are the same image.
    assert psnr(grey, other, 3, True) == psnr(grey[..., None], other, 3, True)
    # On Y a grey level v becomes 16 + 219 v / 255, so errors shrink by 219/255.
    raw = psnr(grey, other, 3, y_only=False)
    assert psnr(grey, other, 3, y_only=True) == pytest.approx(raw + 20 * math.log10(255 / 219), abs=1e-10)


def test_bad_inputs() -> None:
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError):
        psnr(a, a[:7], 0, True)
    with pytest.raises(TypeError):
        psnr(a.astype(np.float32), a, 0, True)
    with pytest.raises(ValueError):
        psnr(a, a, 4, True)
    with pytest.raises(ValueError):
        ssim(a, a, 0, True)  # smaller than the 11x11 window


# --- cross-check with scikit-image --------------------------------------------


@pytest.mark.parametrize("name", ["baby", "butterfly"])
def test_matches_scikit_image(name: str) -> None:
    skm = pytest.importorskip("skimage.metrics")
    hr = np.array(Image.open(DATA / "Set5" / "HR" / f"{name}.png"))
    deg = _degraded(hr)
    b = 4
    a_c, d_c = hr[b:-b, b:-b], deg[b:-b, b:-b]
    y_a, y_d = rgb_to_y(a_c.astype(np.float64)), rgb_to_y(d_c.astype(np.float64))
    opts = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)

    assert psnr(hr, deg, b, y_only=True) == pytest.approx(
        skm.peak_signal_noise_ratio(y_a, y_d, data_range=255), abs=1e-6)
    assert psnr(hr, deg, b, y_only=False) == pytest.approx(
        skm.peak_signal_noise_ratio(a_c, d_c, data_range=255), abs=1e-6)
    assert ssim(hr, deg, b, y_only=True) == pytest.approx(
        skm.structural_similarity(y_a, y_d, **opts), abs=1e-6)
    assert ssim(hr, deg, b, y_only=False) == pytest.approx(
        skm.structural_similarity(a_c, d_c, channel_axis=2, **opts), abs=1e-6)


# --- to_uint8 -----------------------------------------------------------------


def test_to_uint8() -> None:
    t = torch.tensor([-0.5, 0.0, 0.2, 0.9999, 1.0, 3.0]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    out = to_uint8(t)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    # 0.2 * 255 = 51; 0.9999 * 255 = 254.97 -> 255; out-of-range values are clamped.
    np.testing.assert_array_equal(out[..., 0], [[0, 0, 51], [255, 255, 255]])
    assert np.array_equal(to_uint8(t[0]), out)
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(2, 3, 4, 4))


# --- the SPEC's bicubic baseline ----------------------------------------------

# SPEC §4, "Bicubic on our copies" (Y PSNR, border crop = scale).
SPEC_BICUBIC = {
    "Set5": {2: 33.67, 3: 30.40, 4: 28.43},
    "Set14": {2: 30.33, 3: 27.63, 4: 26.09},
}


def _bicubic_psnr(root: Path, scale: int) -> float:
    values = []
    for hr_path in sorted((root / "HR").glob("*.png")):
        lr = np.array(Image.open(root / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"))
        lr3 = lr[..., None] if lr.ndim == 2 else lr
        hr = np.array(Image.open(hr_path))[: lr.shape[0] * scale, : lr.shape[1] * scale]
        x = torch.from_numpy(lr3.transpose(2, 0, 1).copy()).double() / 255
        up = to_uint8(imresize(x, scale=scale))
        values.append(psnr(up, hr, scale, y_only=True))
    return float(np.mean(values))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_baseline_set5(scale: int) -> None:
    assert _bicubic_psnr(DATA / "Set5", scale) == pytest.approx(SPEC_BICUBIC["Set5"][scale], abs=0.02)


@pytest.mark.skipif(not (SHARED / "Set14" / "HR").is_dir(), reason="Set14 not in /work/shared/data/benchmark")
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_baseline_set14(scale: int) -> None:
    assert _bicubic_psnr(SHARED / "Set14", scale) == pytest.approx(SPEC_BICUBIC["Set14"][scale], abs=0.02)
