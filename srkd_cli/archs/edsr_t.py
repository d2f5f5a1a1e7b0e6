"""EDSR-T, the teacher of paper 1: 3 residual blocks of 9 residual modules each (SPEC §1)."""

from __future__ import annotations

import torch
from torch import nn

from . import ArchSpec, register
from .base import ResidualBodySR, pixel_shuffle_upsampler
from .statedict import StateDict, count, known, size_of


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
        self.feature_names = self.feature_names_for(blocks)
        self._init_mean()
        self.head = nn.Conv2d(3, n_feats, 3, padding=1)
        self.body = nn.ModuleList(ResidualBlock(n_feats, modules_per_block, res_scale) for _ in range(blocks))
        self.body_conv = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.tail = pixel_shuffle_upsampler(n_feats, scale, 3)


def detect(sd: StateDict):
    """(config, scale) of an EDSR-T state dict, or None."""
    if "head.weight" not in sd or "body_conv.weight" not in sd or "body.0.body.0.body.0.weight" not in sd:
        return None
    nf = size_of(sd, "head.weight")
    cfg = known(
        n_feats=nf,
        blocks=count(sd, r"body\.(\d+)\."),
        modules_per_block=count(sd, r"body\.0\.body\.(\d+)\."),
    )
    first, scale = size_of(sd, "tail.0.weight"), None
    if first is not None and nf and first == 9 * nf:
        scale = 3
    elif first is not None and nf and first == 4 * nf:
        scale = 4 if size_of(sd, "tail.2.weight") == 4 * nf else 2
    return cfg, scale


SPEC = register(ArchSpec(
    name="edsr-t",
    aliases=("edsrt", "edsr"),
    cls=EDSRT,
    defaults=dict(n_feats=64, blocks=3, modules_per_block=9, res_scale=0.1),
    detect=detect,
    description="EDSR-T teacher (paper 1): 3 residual blocks x 9 residual modules",
    # at x4 the upsampler's wide convolutions at twice the input size dominate
    bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * (10 + 3 * s * s) + 3 * 12 * s * s,
    # edsr-t-x2 under bf16 autocast (AMX, 2 threads): Set5 1.26-1.38x faster, -0.007 dB on Set5 and
    # -0.006 dB on Set14 (docs/performance.md), within the 0.01 dB that a teacher may move
    cpu_bf16_fill=True,
))
