"""SqueezeSR, the student of paper 1: SqueezeNet-style fire blocks, no downsampling (SPEC §1)."""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from ..errors import ConfigError
from . import ArchSpec, register
from .base import ResidualBodySR
from .options import OptionError, whole
from .statedict import StateDict, count, known, scale_from_channels, size_of


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
        self.feature_names = self.feature_names_for(blocks)
        self._init_mean()
        self.head = nn.Conv2d(3, n_feats, 3, padding=1)
        self.body = nn.ModuleList(SqueezeBlock(n_feats, squeeze, expand1x1) for _ in range(blocks))
        self.body_conv = nn.Identity()  # the student keeps only the global skip: no extra conv
        # ESPCN-style sub-pixel tail: one conv straight to scale^2 * 3 channels keeps it light.
        self.tail = nn.Sequential(nn.Conv2d(n_feats, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))


def detect(sd: StateDict):
    """(config, scale) of a SqueezeSR state dict, or None."""
    if "head.weight" not in sd or "body.0.squeeze.weight" not in sd:
        return None
    n, wide = size_of(sd, "head.weight"), size_of(sd, "body.0.expand3x3.weight")
    cfg = known(
        n_feats=n,
        blocks=count(sd, r"body\.(\d+)\."),
        squeeze=size_of(sd, "body.0.squeeze.weight"),
        # the two expands concatenate back to n_feats: either one tells the split
        expand1x1=size_of(sd, "body.0.expand1x1.weight") or (n - wide if n and wide else None),
    )
    return cfg, scale_from_channels(size_of(sd, "tail.0.weight"))


def check(cfg: Dict[str, Any]) -> None:
    n, expand = whole(cfg, "n_feats", least=2), whole(cfg, "expand1x1")
    if expand >= n:
        raise OptionError("expand1x1", expand, f"a whole number from 1 to n_feats - 1 ({n - 1})")


# Its inference forms build on the classes above (and import them), hence here, not at the top.
from . import squeezesr_fused  # noqa: E402

SPEC = register(ArchSpec(
    name="squeezesr",
    cls=SqueezeSR,
    defaults=dict(n_feats=64, blocks=3, squeeze=16, expand1x1=32),
    detect=detect,
    validate=check,
    description="SqueezeSR student (paper 1): 3 fire-style squeeze blocks",
    bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * 11 + 7 * 12 * s * s,
    train_defaults={"patch": 48, "lr": 1e-3},
    fused_form=squeezesr_fused.reparameterize,
    graph_form=squeezesr_fused.for_graph_runtime,
    receptive_radius=squeezesr_fused.receptive_radius,
    int8=squeezesr_fused.int8_form,
    expandable=True,
))
