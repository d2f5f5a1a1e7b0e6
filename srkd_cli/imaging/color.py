"""RGB <-> YCbCr as the super-resolution protocol (and MATLAB's ``rgb2ycbcr``) defines it.

ITU-R BT.601 "studio swing": for R, G, B in [0, 1],

    Y  = 16  + 65.481 R + 128.553 G +  24.966 B     (in [16, 235])
    Cb = 128 - 37.797 R -  74.203 G + 112.000 B     (in [16, 240])
    Cr = 128 + 112.000 R - 93.786 G -  18.214 B

on the 0..255 scale. Two entry points use it:

- ``rgb_to_y``: numpy, pixel values on the 0..255 scale, Y on the 0..255 scale,
  float64 and *not rounded* (the metrics protocol's "float Y").
- ``rgb_to_ycbcr`` / ``ycbcr_to_rgb``: torch, (..., 3, H, W) in [0, 1] both ways,
  i.e. the 0..255 figures above divided by 255 (MATLAB's result for double input).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["rgb_to_y", "rgb_to_ycbcr", "ycbcr_to_rgb"]

# Rows give Y, Cb, Cr; coefficients apply to R, G, B in [0, 1] and give 0..255 values.
_MATRIX = np.array(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ],
    dtype=np.float64,
)
_OFFSET = np.array([16.0, 128.0, 128.0], dtype=np.float64)


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """Luma of an HxWx3 RGB array with values on the 0..255 scale (any real dtype).

    Returns HxW float64 on the 0..255 scale, in [16, 235] for inputs in [0, 255].
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb_to_y: expected HxWx3, got shape {rgb.shape}")
    x = rgb.astype(np.float64, copy=False)
    # R,G,B on 0..255: divide the [0, 1] coefficients by 255.
    return 16.0 + (
        _MATRIX[0, 0] * x[..., 0] + _MATRIX[0, 1] * x[..., 1] + _MATRIX[0, 2] * x[..., 2]
    ) / 255.0


def _check_channels(x: Tensor, name: str) -> None:
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"{name}: expected (..., 3, H, W), got shape {tuple(x.shape)}")


def _mix(x: Tensor, matrix: np.ndarray, offset: np.ndarray) -> Tensor:
    """``matrix @ x + offset`` over the channel axis, as plain multiply-adds.

    Elementwise on purpose: a matmul/einsum may run in TF32 on GPUs, which costs
    about 0.1 grey level.
    """
    a, b, c = x.unbind(-3)
    rows = [
        float(matrix[i, 0]) * a + float(matrix[i, 1]) * b + float(matrix[i, 2]) * c + float(offset[i])
        for i in range(3)
    ]
    return torch.stack(rows, dim=-3)


_INVERSE = np.linalg.inv(_MATRIX / 255.0)


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> YCbCr in [0, 1] (Y in [16/255, 235/255])."""
    _check_channels(rgb, "rgb_to_ycbcr")
    return _mix(rgb, _MATRIX / 255.0, _OFFSET / 255.0)


def ycbcr_to_rgb(ycbcr: Tensor) -> Tensor:
    """Inverse of ``rgb_to_ycbcr``: (..., 3, H, W) YCbCr in [0, 1] -> RGB (not clamped)."""
    _check_channels(ycbcr, "ycbcr_to_rgb")
    return _mix(ycbcr, _INVERSE, -_INVERSE @ (_OFFSET / 255.0))
