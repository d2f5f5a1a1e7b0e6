"""MATLAB-compatible bicubic imresize: the benchmark LR files, kernel values, shapes, dtypes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srkd_cli.imaging.imresize import bicubic_downscale_uint8, imresize

DATA = Path(__file__).parent / "data"
SHARED = Path("/work/shared/data/benchmark")

# Measured: every pixel of Set5 and Set14 at x2/x3/x4 equals the MATLAB file.
# The margin leaves room for a tie rounded the other way on another CPU.
MIN_EXACT_SHARE = 0.9999


def _pairs(root: Path, scale: int):
    for hr_path in sorted((root / "HR").glob("*.png")):
        lr_path = root / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"
        yield hr_path.stem, np.array(Image.open(hr_path)), np.array(Image.open(lr_path))


def _check_set(root: Path, scale: int) -> None:
    equal = total = 0
    for stem, hr, lr in _pairs(root, scale):
        ours = bicubic_downscale_uint8(hr, scale)
        assert ours.shape == lr.shape, stem
        diff = np.abs(ours.astype(np.int16) - lr.astype(np.int16))
        assert diff.max() <= 1, f"{stem} x{scale}: worst difference {diff.max()}"
        equal += int((diff == 0).sum())
        total += diff.size
    assert total > 0
    assert equal / total >= MIN_EXACT_SHARE, f"x{scale}: exact share {equal / total:.6f}"


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_matches_matlab_lr(scale: int) -> None:
    _check_set(DATA / "Set5", scale)


@pytest.mark.skipif(not (SHARED / "Set14" / "HR").is_dir(), reason="Set14 not in /work/shared/data/benchmark")
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set14_matches_matlab_lr(scale: int) -> None:
    # Holds grey images (bridge.png), so this also covers the HxW path.
    _check_set(SHARED / "Set14", scale)


def test_float_batch_on_unit_range_matches_matlab_lr() -> None:
    """The training path: float32 [0, 1] batch with quantize_to=1.0 gives the same LR files."""
    scale = 4
    for stem, hr, lr in _pairs(DATA / "Set5", scale):
        h, w = lr.shape[:2]
        x = torch.from_numpy(hr[: h * scale, : w * scale].transpose(2, 0, 1).copy()).float() / 255
        out = imresize(x[None].repeat(2, 1, 1, 1), scale=1 / scale, quantize_to=1.0)
        assert out.shape == (2, 3, h, w) and out.dtype == torch.float32
        got = torch.round(out[1] * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(got, lr), stem


def test_without_uint8_rounding_between_passes_differs_from_matlab() -> None:
    """Why quantize_to exists: one float pass and a final rounding misses ~14% of pixels."""
    _, hr, lr = next(_pairs(DATA / "Set5", 2))
    x = torch.from_numpy(hr.transpose(2, 0, 1).copy()).double()
    got = np.floor(np.clip(imresize(x, scale=0.5).numpy(), 0, 255) + 0.5).transpose(1, 2, 0)
    diff = np.abs(got - lr)
    assert diff.max() <= 2
    assert 0.75 < (diff == 0).mean() < 0.95


def test_antialiased_kernel_values_for_halving() -> None:
    # Shrinking by 2 stretches Keys' cubic (a = -0.5) to width 8 and halves it:
    # taps at distances 0.5, 1.5, 2.5, 3.5 weigh cubic(0.25)/2, cubic(0.75)/2, ...
    # cubic(0.25) = 1.5/64 - 2.5/16 + 1 = 0.8671875, cubic(0.75) = 0.2265625,
    # cubic(1.25) = -0.0703125, cubic(1.75) = -0.0234375.
    x = torch.zeros(1, 1, 16, 4, dtype=torch.float64)
    x[:, :, 7, :] = 1.0  # input row 8 (1-based)
    out = imresize(x, scale=0.5)[0, 0, :, 0]
    # Output row k samples input position 2k - 0.5: rows 3..6 reach row 8.
    expected = torch.tensor(
        [0, 0, -0.03515625, 0.43359375, 0.11328125, -0.01171875, 0, 0], dtype=torch.float64
    )
    assert torch.equal(out, expected)


def test_enlarging_a_ramp_is_linear_inside_and_mirrors_at_the_edge() -> None:
    n = 12
    ramp = torch.arange(n, dtype=torch.float64).view(1, 1, n, 1).expand(1, 1, n, 3).contiguous()
    out = imresize(ramp, scale=2)[0, 0, :, 0]
    assert out.shape == (2 * n,)
    # Output k (1-based) samples input position k/2 + 1/4; the ramp's value there is
    # that position - 1. Cubic convolution reproduces straight lines exactly where
    # all four taps lie inside the image.
    k = torch.arange(1, 2 * n + 1, dtype=torch.float64)
    inside = (k >= 6) & (k <= 2 * n - 5)
    assert torch.allclose(out[inside], (k / 2 + 0.25 - 1)[inside], atol=1e-12)
    # First output: taps at input rows -1, 0, 1, 2 (weights -0.0234375, 0.2265625,
    # 0.8671875, -0.0703125). Mirroring with the edge repeated maps -1 -> 2, 0 -> 1,
    # so the value is -0.0234375 * 1 + 0.2265625 * 0 + 0.8671875 * 0 - 0.0703125 * 1.
    assert out[0].item() == pytest.approx(-0.09375, abs=1e-15)


def test_constant_image_stays_constant() -> None:
    x = torch.full((2, 3, 9, 13), 0.37, dtype=torch.float64)
    for kwargs in ({"scale": 3}, {"scale": 1 / 3}, {"size": (5, 20)}):
        out = imresize(x, **kwargs)
        assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-14)


def test_shapes() -> None:
    x = torch.rand(2, 3, 10, 7)
    assert imresize(x, scale=2).shape == (2, 3, 20, 14)
    assert imresize(x, scale=3).shape == (2, 3, 30, 21)
    assert imresize(x, scale=0.5).shape == (2, 3, 5, 4)  # ceil(3.5)
    assert imresize(x, size=(4, 11)).shape == (2, 3, 4, 11)
    assert imresize(x[0], scale=2).shape == (3, 20, 14)
    # 255 * (1/3) is 85.00000000000001 in floating point; MATLAB's size is 85.
    assert imresize(torch.rand(1, 1, 255, 6), scale=1 / 3).shape == (1, 1, 85, 2)


def test_batched_equals_per_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 17, 23, generator=g)
    for kwargs in ({"scale": 1 / 3}, {"scale": 2}, {"size": (9, 40)}):
        batched = imresize(x, **kwargs)
        single = torch.stack([imresize(img, **kwargs) for img in x])
        assert torch.equal(batched, single)


def test_dtypes() -> None:
    g = torch.Generator().manual_seed(1)
    x64 = torch.rand(1, 3, 20, 16, dtype=torch.float64, generator=g)
    out64 = imresize(x64, scale=0.25)
    out32 = imresize(x64.float(), scale=0.25)
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    assert torch.allclose(out64, out32.double(), atol=1e-6)
    out16 = imresize(x64.half(), scale=0.25)
    assert out16.dtype == torch.float16
    assert torch.allclose(out16.double(), out64, atol=2e-3)


def test_bad_arguments() -> None:
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError):
        imresize(x)
    with pytest.raises(ValueError):
        imresize(x, scale=2, size=(16, 16))
    with pytest.raises(TypeError):
        imresize((x * 255).to(torch.uint8), scale=2)
    with pytest.raises(TypeError):
        bicubic_downscale_uint8(np.zeros((8, 8, 3), dtype=np.float32), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    x = torch.rand(2, 3, 48, 40)
    for kwargs in ({"scale": 1 / 4}, {"scale": 3}):
        cpu = imresize(x, **kwargs)
        gpu = imresize(x.cuda(), **kwargs)
        assert gpu.device.type == "cuda"
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
