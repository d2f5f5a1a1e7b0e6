"""PSNR and SSIM as the super-resolution literature measures them.

Protocol (SPEC §3): both images are uint8 (model output is rounded once, by
``to_uint8``); ``crop_border`` pixels are dropped on every side; with ``y_only`` an
RGB image is reduced to its BT.601 luma Y (float, not rounded, 0..255 scale).
A one-channel (grey) image counts as R = G = B, so its Y is 16 + 219·v/255:
that is what tools that read every image as colour (BasicSR, EDSR) measure, it
reproduces the SPEC's bicubic Set14 figures (bridge.png is grey; taking the grey
value itself as Y gives ~0.09 dB less on Set14), and it scores a grey image the
same whether it arrives with one channel or three. SSIM uses an 11x11 Gaussian window
(sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, keeps only the positions where the
window lies inside the image ('valid'), and averages RGB SSIM over channels.
This is the MATLAB ``ssim_index`` protocol used by EDSR and BasicSR; it equals
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from srkd_cli.imaging.color import rgb_to_y

__all__ = ["psnr", "ssim", "to_uint8"]

_PEAK = 255.0
_SSIM_C1 = (0.01 * _PEAK) ** 2
_SSIM_C2 = (0.03 * _PEAK) ** 2
_SSIM_RADIUS = 5  # 11x11 window
_SSIM_SIGMA = 1.5


def to_uint8(t: Tensor) -> np.ndarray:
    """A (C,H,W) or (1,C,H,W) image in [0, 1] -> HxWxC uint8: clamp, x255, round.

    The one place the protocol rounds model output (ties to even, ``torch.round``).
    """
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"to_uint8: expected one image, got batch of {t.shape[0]}")
        t = t[0]
    if t.dim() != 3:
        raise ValueError(f"to_uint8: expected (C,H,W) or (1,C,H,W), got shape {tuple(t.shape)}")
    x = t.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    x = torch.round(x.clamp(0.0, 1.0) * 255.0)
    return x.to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _prepare(a: np.ndarray, b: np.ndarray, crop_border: int, y_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Check, crop and (optionally) reduce to Y; returns float64 HxWxC arrays."""
    for name, arr in (("a", a), ("b", b)):
        if arr.dtype != np.uint8:
            raise TypeError(f"metrics: image {name} must be uint8, got {arr.dtype}")
        if arr.ndim not in (2, 3):
            raise ValueError(f"metrics: image {name} must be HxW or HxWxC, got shape {arr.shape}")
    # HxW and HxWx1 are the same grey image.
    if (a.shape + (1,))[:3] != (b.shape + (1,))[:3]:
        raise ValueError(f"metrics: images differ in shape: {a.shape} vs {b.shape}")
    if crop_border < 0:
        raise ValueError(f"metrics: crop_border must be >= 0, got {crop_border}")
    h, w = a.shape[:2]
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"metrics: crop_border {crop_border} leaves nothing of a {h}x{w} image")

    def one(x: np.ndarray) -> np.ndarray:
        x = x[..., None] if x.ndim == 2 else x
        if crop_border:
            x = x[crop_border:-crop_border, crop_border:-crop_border]
        x = x.astype(np.float64)
        if y_only and x.shape[2] == 1:
            x = np.repeat(x, 3, axis=2)
        if y_only and x.shape[2] == 3:
            x = rgb_to_y(x)[..., None]
        return x

    return one(a), one(b)


def psnr(a: np.ndarray, b: np.ndarray, crop_border: int, y_only: bool) -> float:
    """Peak signal-to-noise ratio in dB (peak 255); ``inf`` for identical images."""
    x, y = _prepare(a, b, crop_border, y_only)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(_PEAK * _PEAK / mse)


def _gaussian_window() -> np.ndarray:
    r = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
    g = np.exp(-(r * r) / (2.0 * _SSIM_SIGMA * _SSIM_SIGMA))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation of HxW ``x`` with ``outer(g, g)``, 'valid' part only."""
    n = g.size
    h, w = x.shape
    rows = sum(g[i] * x[i : h - n + 1 + i, :] for i in range(n))
    return sum(g[j] * rows[:, j : w - n + 1 + j] for j in range(n))


def _ssim_channel(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    mu_x = _filter_valid(x, g)
    mu_y = _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x * mu_x
    var_y = _filter_valid(y * y, g) - mu_y * mu_y
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + _SSIM_C1) * (2.0 * cov + _SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray, crop_border: int, y_only: bool) -> float:
    """Structural similarity (mean over channels for RGB); 1.0 for identical images."""
    x, y = _prepare(a, b, crop_border, y_only)
    if min(x.shape[:2]) < 2 * _SSIM_RADIUS + 1:
        raise ValueError(f"ssim: image {x.shape[0]}x{x.shape[1]} after crop is smaller than the 11x11 window")
    g = _gaussian_window()
    return float(np.mean([_ssim_channel(x[..., c], y[..., c], g) for c in range(x.shape[2])]))
