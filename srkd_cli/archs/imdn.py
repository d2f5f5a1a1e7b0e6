"""IMDN (Hui et al., ACM MM 2019): information multi-distillation network, a lightweight teacher.

Written from the paper's description, with the official checkpoints' parameter names so their
state dicts load as they are. Each block (IMDB) splits its features progressively: three 3x3
convs each keep a quarter of their output ("distilled") and pass the rest on, a fourth 3x3
conv makes the last quarter; the four quarters are concatenated, re-weighted by contrast-aware
channel attention (per-channel standard deviation + mean -> squeeze/excite), fused by a 1x1
conv and added to the block's input. All six blocks' outputs are fused by a 1x1 conv, a 3x3
"LR conv" adds the head's features back (global skip), and one conv + pixel shuffle upsamples.
Input RGB in [0, 1], no mean shift.

Features for distillation: `T1`, `T2`, `T3` are the outputs of blocks 2, 4 and 6 (64 channels at
LR size), paired with SqueezeSR's `S1..S3` by paper 1's recipe; `B1..B6` name every block.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn

from . import ArchSpec, register
from .base import SRModel
from .options import whole
from .statedict import StateDict, count, known, scale_from_channels, size_of

NEG_SLOPE = 0.05  # the official LeakyReLU slope


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class ContrastChannelAttention(nn.Module):
    """Channel weights from each channel's standard deviation plus its mean (the paper's CCA)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return x * self.conv_du(std + mean)


class IMDBlock(nn.Module):
    """One information multi-distillation block: progressive quarter splits, CCA, 1x1 fusion, skip."""

    def __init__(self, n_feats: int = 64, distill_rate: float = 0.25):
        super().__init__()
        self.keep = int(n_feats * distill_rate)
        self.rest = n_feats - self.keep
        self.c1 = _conv(n_feats, n_feats, 3)
        self.c2 = _conv(self.rest, n_feats, 3)
        self.c3 = _conv(self.rest, n_feats, 3)
        self.c4 = _conv(self.rest, self.keep, 3)
        self.act = nn.LeakyReLU(NEG_SLOPE, inplace=True)
        self.c5 = _conv(4 * self.keep, n_feats, 1)
        self.cca = ContrastChannelAttention(4 * self.keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = []
        t = x
        for conv in (self.c1, self.c2, self.c3):
            d, t = torch.split(self.act(conv(t)), (self.keep, self.rest), dim=1)
            kept.append(d)
        kept.append(self.c4(t))
        return self.c5(self.cca(torch.cat(kept, dim=1))) + x


class IMDN(SRModel):
    @staticmethod
    def feature_names_for(blocks: int, **_: Any) -> Tuple[str, ...]:
        # T_j is block 2j's output: six blocks give the three features paper 1 pairs with S1..S3.
        return tuple(f"T{j + 1}" for j in range(blocks // 2)) + tuple(f"B{i + 1}" for i in range(blocks))

    def __init__(self, scale: int = 2, n_feats: int = 64, blocks: int = 6):
        super().__init__()
        self.scale = scale
        self.feature_names = self.feature_names_for(blocks)
        self.fea_conv = _conv(3, n_feats, 3)
        self.blocks = blocks
        for i in range(blocks):
            setattr(self, f"IMDB{i + 1}", IMDBlock(n_feats))
        self.c = nn.Sequential(nn.Conv2d(n_feats * blocks, n_feats, 1), nn.LeakyReLU(NEG_SLOPE, inplace=True))
        self.LR_conv = _conv(n_feats, n_feats, 3)
        self.upsampler = nn.Sequential(_conv(n_feats, 3 * scale * scale, 3), nn.PixelShuffle(scale))

    def _forward(self, x: torch.Tensor, names: Tuple[str, ...]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        head = self.fea_conv(x)
        outs = []
        t = head
        for i in range(self.blocks):
            t = getattr(self, f"IMDB{i + 1}")(t)
            outs.append(t)
        feats: Dict[str, torch.Tensor] = {}
        for name in names:
            j = int(name[1:])
            feats[name] = outs[2 * j - 1] if name[0] == "T" else outs[j - 1]
        body = self.LR_conv(self.c(torch.cat(outs, dim=1))) + head
        return self.upsampler(body), feats


def detect(sd: StateDict):
    """(config, scale) of an IMDN state dict, or None."""
    if "fea_conv.weight" not in sd or "IMDB1.c1.weight" not in sd or "upsampler.0.weight" not in sd:
        return None
    cfg = known(n_feats=size_of(sd, "fea_conv.weight"), blocks=count(sd, r"IMDB(\d+)\."))
    return cfg, scale_from_channels(size_of(sd, "upsampler.0.weight"))


def check_attention_width(cfg: Dict[str, Any]) -> None:
    # IMDN's and BSRN's channel attention squeeze their features 16 times (IMDN: its 4 quarters)
    whole(cfg, "n_feats", least=16)


SPEC = register(ArchSpec(
    name="imdn",
    cls=IMDN,
    defaults=dict(n_feats=64, blocks=6),
    detect=detect,
    validate=check_attention_width,
    description="IMDN (Hui et al. 2019), official weights: a lightweight teacher a CPU can run",
    # every block's output is kept for the final fusion, then concatenated once more
    bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * (2 * cfg["blocks"] + 6) + 7 * 12 * s * s,
))
