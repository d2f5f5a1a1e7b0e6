"""SqueezeSR, the student of paper 1: SqueezeNet-style fire blocks, no downsampling (SPEC §1)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .base import ResidualBodySR


class SqueezeBlock(nn.Module):
    """Fire module with a skip: 1x1 squeeze, then 1x1 and 3x3 expands concatenated back to `n_feats`."""

    def __init__(self, n_feats: int, squeeze: int, expand1x1: int):
        super().__init__()
        self.squeeze = nn.Conv2d(n_feats, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, n_feats - expand1x1, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.act(self.squeeze(x))
        return x + self.act(torch.cat([self.expand1x1(s), self.expand3x3(s)], dim=1))


class SqueezeSR(ResidualBodySR):
    feature_prefix = "S"

    def __init__(self, scale: int = 2, n_feats: int = 64, blocks: int = 3, squeeze: int = 16, expand1x1: int = 32):
        if not 0 < expand1x1 < n_feats or squeeze < 1 or blocks < 1:
            raise ConfigError(f"squeezesr: needs blocks >= 1, squeeze >= 1 and 0 < expand1x1 < n_feats "
                              f"(got blocks={blocks}, squeeze={squeeze}, expand1x1={expand1x1}, n_feats={n_feats})")
        super().__init__()
        self.scale = scale
        self.feature_names = tuple(f"S{i + 1}" for i in range(blocks))
        self._init_mean()
        self.head = nn.Conv2d(3, n_feats, 3, padding=1)
        self.body = nn.ModuleList(SqueezeBlock(n_feats, squeeze, expand1x1) for _ in range(blocks))
        self.body_conv = nn.Identity()  # the student keeps only the global skip: no extra conv
        # ESPCN-style sub-pixel tail: one conv straight to scale^2 * 3 channels keeps it light.
        self.tail = nn.Sequential(nn.Conv2d(n_feats, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
