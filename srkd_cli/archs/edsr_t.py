"""EDSR-T, the teacher of paper 1: 3 residual blocks of 9 residual modules each (SPEC §1)."""

from __future__ import annotations

import torch
from torch import nn

from .base import ResidualBodySR, pixel_shuffle_upsampler


class ResidualModule(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, scaled by `res_scale`, plus a skip (EDSR's ResBlock)."""

    def __init__(self, n_feats: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(n_feats, n_feats, 3, padding=1)
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class ResidualBlock(nn.Module):
    """`n_modules` residual modules with a skip connection around them."""

    def __init__(self, n_feats: int, n_modules: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(*(ResidualModule(n_feats, res_scale) for _ in range(n_modules)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EDSRT(ResidualBodySR):
    feature_prefix = "T"

    def __init__(self, scale: int = 2, n_feats: int = 64, blocks: int = 3, modules_per_block: int = 9, res_scale: float = 0.1):
        super().__init__()
        self.scale = scale
        self.feature_names = tuple(f"T{i + 1}" for i in range(blocks))
        self._init_mean()
        self.head = nn.Conv2d(3, n_feats, 3, padding=1)
        self.body = nn.ModuleList(ResidualBlock(n_feats, modules_per_block, res_scale) for _ in range(blocks))
        self.body_conv = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.tail = pixel_shuffle_upsampler(n_feats, scale, 3)
