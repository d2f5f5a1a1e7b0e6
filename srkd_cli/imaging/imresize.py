"""MATLAB-compatible bicubic ``imresize`` in torch, for any device.

The super-resolution benchmarks make their LR images with MATLAB's
``imresize(hr, 1/s, 'bicubic')``; OpenCV, PIL and torch's bicubic differ from it
(no antialiasing, other kernel constant, other borders) and move PSNR by tenths
of a dB. This module follows MATLAB's algorithm:

- Keys cubic kernel with a = -0.5, support [-2, 2].
- Output pixel ``k`` (1-based) samples the input at ``u = k/scale + (1 - 1/scale)/2``.
- When shrinking with antialiasing, the kernel is stretched by ``1/scale`` (and its
  height scaled by ``scale``), so more input pixels contribute.
- Each output pixel gets ``ceil(width) + 2`` taps, weights normalised to sum 1;
  taps outside the image are mirrored back (index reflection with period
  ``2 * in_length``, the edge pixel repeated); taps whose weight is zero for every
  output pixel are dropped.
- The two dimensions are resized one after the other, the one with the smaller
  scale first (height first when the scales are equal).
- For uint8 images MATLAB keeps the intermediate image in uint8: it clips and
  rounds (half away from zero) after *each* pass. ``quantize_to`` emulates that
  on float input; without it the Set5/Set14 LR files differ by +-1 in ~14% of
  pixels, with it they are reproduced exactly.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["imresize", "bicubic_downscale_uint8"]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _contributions(
    in_length: int, out_length: int, scale: float, antialias: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out, taps) float64 and 0-based input indices (out, taps) for one dimension."""
    width = 4.0
    if scale < 1 and antialias:
        kernel = lambda x: scale * _cubic(scale * x)  # noqa: E731
        width = width / scale
    else:
        kernel = _cubic

    out_pos = np.arange(1, out_length + 1, dtype=np.float64)
    # Input coordinate (1-based) that output pixel k maps to, pixel centres aligned.
    u = out_pos / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)

    # Mirror out-of-range taps: sequence 1..n, n..1 repeated (edge pixel doubled).
    period = 2 * in_length
    idx = np.mod(indices.astype(np.int64) - 1, period)
    idx = np.where(idx < in_length, idx, period - 1 - idx)

    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], idx[:, keep]


@lru_cache(maxsize=128)
def _cached_contributions(
    in_length: int,
    out_length: int,
    scale: float,
    antialias: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    weights, idx = _contributions(in_length, out_length, scale, antialias)
    return (
        torch.from_numpy(np.ascontiguousarray(weights)).to(device=device, dtype=dtype),
        torch.from_numpy(np.ascontiguousarray(idx)).to(device=device),
    )


def _resize_dim(x: Tensor, dim: int, out_length: int, scale: float, antialias: bool) -> Tensor:
    """Resize ``x`` along ``dim`` (-2 or -1) with MATLAB's weights."""
    weights, idx = _cached_contributions(
        x.shape[dim], out_length, float(scale), antialias, x.device, x.dtype
    )
    # One tap at a time: memory stays at two outputs, and the elementwise
    # multiply-add avoids the reduced precision (TF32) a matmul may use on GPUs.
    shape = [1] * x.dim()
    shape[dim] = out_length
    out = None
    for t in range(weights.shape[1]):
        term = x.index_select(dim, idx[:, t]) * weights[:, t].view(shape)
        out = term if out is None else out.add_(term)
    assert out is not None
    return out


def _to_levels(x: Tensor) -> Tensor:
    """Clip to [0, 255] and round to integers half away from zero, as a uint8 cast does."""
    # Non-negative after the clip, so floor(v + 0.5) rounds half away from zero.
    return torch.floor(x.clamp(0.0, 255.0) + 0.5)


def _output_length(in_length: int, scale: float) -> int:
    exact = in_length * scale
    # 1/3 and friends are inexact in binary: 255 * (1/3) must give 85, not 86.
    nearest = round(exact)
    if abs(exact - nearest) < 1e-9 * max(1.0, abs(exact)):
        return int(nearest)
    return int(math.ceil(exact))


def imresize(
    x: Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
    *,
    quantize_to: float | None = None,
) -> Tensor:
    """Resize an (N,C,H,W) or (C,H,W) float tensor like MATLAB's ``imresize(..., 'bicubic')``.

    Give either ``scale`` (same factor for height and width; output size is
    ``ceil(scale * input size)``) or ``size`` = (H, W) (the factor per dimension is
    then out/in). Computes in float32, or float64 for float64 input; half-precision
    input is computed in float32 and returned in its own dtype. Values are not
    clamped: bicubic overshoots, and callers round/clip as their protocol says.

    ``quantize_to`` (e.g. 1.0 or 255.0, the value of white) makes the result what
    MATLAB returns for a uint8 image: the input is snapped to 256 levels of
    [0, quantize_to], and after each 1-D pass the values are clipped and rounded
    (half away from zero) to those levels again.
    """
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale or size")
    if x.dim() not in (3, 4):
        raise ValueError(f"imresize: expected (N,C,H,W) or (C,H,W), got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise TypeError(f"imresize: expected a float tensor, got {x.dtype}")

    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    in_dtype = x.dtype
    work = x if in_dtype in (torch.float32, torch.float64) else x.float()

    in_h, in_w = work.shape[-2:]
    if size is not None:
        out_h, out_w = int(size[0]), int(size[1])
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"imresize: output size must be positive, got {size}")
        scales = (out_h / in_h, out_w / in_w)
    else:
        if scale <= 0:
            raise ValueError(f"imresize: scale must be positive, got {scale}")
        scales = (float(scale), float(scale))
        out_h, out_w = _output_length(in_h, scales[0]), _output_length(in_w, scales[1])

    if quantize_to is not None:
        # Work on integer levels: exact .5 ties on the 0..255 scale stay exact,
        # which they would not on a 0..1 scale.
        work = _to_levels(work * (255.0 / quantize_to))

    targets = {-2: (out_h, scales[0]), -1: (out_w, scales[1])}
    # Stable sort: smaller scale first, height first on ties (MATLAB's order).
    order = sorted((-2, -1), key=lambda d: targets[d][1])
    for dim in order:
        length, s = targets[dim]
        if length == work.shape[dim] and s == 1.0:
            continue  # scale 1 gives the identity weights
        work = _resize_dim(work, dim, length, s, antialias)
        if quantize_to is not None:
            work = _to_levels(work)

    if quantize_to is not None:
        work = work * (quantize_to / 255.0)

    out = work.to(in_dtype)
    return out.squeeze(0) if squeeze else out


def bicubic_downscale_uint8(hr: np.ndarray, scale: int) -> np.ndarray:
    """Make the benchmark LR image from an HR uint8 array (HxW or HxWxC), as MATLAB does.

    HR is cropped to a multiple of ``scale`` (bottom/right), shrunk by ``1/scale``
    in float64 on the [0, 255] scale with MATLAB's uint8 rounding after each pass.
    Reproduces the benchmark ``LR_bicubic`` files of Set5 and Set14 exactly.
    """
    if hr.dtype != np.uint8:
        raise TypeError(f"bicubic_downscale_uint8: expected uint8, got {hr.dtype}")
    if hr.ndim not in (2, 3):
        raise ValueError(f"bicubic_downscale_uint8: expected HxW or HxWxC, got shape {hr.shape}")
    h, w = hr.shape[:2]
    h, w = h - h % scale, w - w % scale
    crop = hr[:h, :w]
    arr = crop[..., None] if crop.ndim == 2 else crop
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).to(torch.float64)
    lr = imresize(t, scale=1.0 / scale, quantize_to=255.0).numpy()
    lr = lr.astype(np.uint8).transpose(1, 2, 0)
    return lr[..., 0] if hr.ndim == 2 else lr
