"""CARN-M (Ahn et al., ECCV 2018): the mobile cascading residual network, a second CPU teacher.

Written from the paper's description with the official checkpoint's parameter names. Three
cascading blocks; inside each, one efficient residual block (two 4-group 3x3 convs and a 1x1,
with a skip) is applied three times with shared weights, and after each application all
earlier outputs are concatenated and fused by a 1x1 conv (the local cascade). The network
repeats that cascade over its three blocks (global cascade), then a grouped conv + pixel shuffle
upsampler and a 3x3 exit conv. The RGB mean is removed and added back by fixed 1x1 convs,
which the official file stores.

The official `carn_m.pth` is one model for x2, x3 and x4: it holds an upsampler per scale
(`upsample.up2/up3/up4`). `canonicalize` keeps the one the requested scale needs.

Features: `T1`, `T2`, `T3` are the outputs of the three global-cascade fusions (64 channels at
LR size), paired with SqueezeSR's `S1..S3`.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from ..errors import CheckpointError
from . import ArchSpec, register
from .base import RGB_MEAN, SRModel
from .options import OptionError, whole
from .statedict import StateDict, known, size_of

GROUPS = 4


class _Fuse(nn.Module):
    """1x1 conv + ReLU over the concatenated cascade."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class EfficientResidual(nn.Module):
    def __init__(self, n: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n, n, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv2d(n, n, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv2d(n, n, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + x)


class Cascade(nn.Module):
    """Three applications of one shared unit, each followed by a 1x1 fusion of everything so far."""

    def __init__(self, n: int, unit: nn.Module):
        super().__init__()
        self.b1 = unit
        self.c1, self.c2, self.c3 = _Fuse(2 * n, n), _Fuse(3 * n, n), _Fuse(4 * n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cat, o = x, x
        for fuse in (self.c1, self.c2, self.c3):
            cat = torch.cat([cat, self.b1(o)], dim=1)
            o = fuse(cat)
        return o


class _MeanShift(nn.Module):
    def __init__(self, sign: float):
        super().__init__()
        self.shifter = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.shifter.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.shifter.bias.copy_(sign * torch.tensor(RGB_MEAN))
        self.shifter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shifter(x)


class _ScaleUp(nn.Module):
    """Grouped conv + ReLU + pixel shuffle, twice for x4."""

    def __init__(self, n: int, scale: int, groups: int):
        super().__init__()
        layers: list = []
        for factor in ((2, 2) if scale == 4 else (scale,)):
            layers += [nn.Conv2d(n, factor * factor * n, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
                       nn.PixelShuffle(factor)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Upsample(nn.Module):
    def __init__(self, n: int, scale: int, groups: int):
        super().__init__()
        self.up = _ScaleUp(n, scale, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class CARNM(SRModel):
    feature_names = ("T1", "T2", "T3")

    def __init__(self, scale: int = 2, n_feats: int = 64, groups: int = GROUPS):
        super().__init__()
        self.scale = scale
        self.sub_mean, self.add_mean = _MeanShift(-1.0), _MeanShift(1.0)
        self.entry = nn.Conv2d(3, n_feats, 3, padding=1)
        self.b1, self.b2, self.b3 = (Cascade(n_feats, EfficientResidual(n_feats, groups)) for _ in range(3))
        self.c1, self.c2, self.c3 = _Fuse(2 * n_feats, n_feats), _Fuse(3 * n_feats, n_feats), _Fuse(4 * n_feats, n_feats)
        self.upsample = _Upsample(n_feats, scale, groups)
        self.exit = nn.Conv2d(n_feats, 3, 3, padding=1)

    def _forward(self, x: torch.Tensor, names: Tuple[str, ...]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        h = self.entry(self.sub_mean(x))
        cat, o, outs = h, h, []
        for block, fuse in zip((self.b1, self.b2, self.b3), (self.c1, self.c2, self.c3)):
            cat = torch.cat([cat, block(o)], dim=1)
            o = fuse(cat)
            outs.append(o)
        feats = {name: outs[int(name[1:]) - 1] for name in names}
        return self.add_mean(self.exit(self.upsample(o))), feats


_MULTI = re.compile(r"^upsample\.up([234])\.(.*)$")


def canonicalize(sd: Mapping[str, torch.Tensor], scale: Optional[int]) -> Dict[str, torch.Tensor]:
    """Keep the upsampler of `scale` from a multi-scale file (`upsample.up{2,3,4}`) as `upsample.up`."""
    scales = {int(m.group(1)) for k in sd if (m := _MULTI.match(k))}
    if not scales:
        return dict(sd)
    held = "x" + ", x".join(map(str, sorted(scales)))
    if scale is None:
        raise CheckpointError(f"holds a CARN-M upsampler for each of {held}: give --scale")
    if scale not in scales:
        raise CheckpointError(f"holds CARN-M upsamplers for {held}, not x{scale}")
    out = {}
    for k, v in sd.items():
        m = _MULTI.match(k)
        if m is None:
            out[k] = v
        elif int(m.group(1)) == scale:
            out[f"upsample.up.{m.group(2)}"] = v
    return out


def detect(sd: StateDict):
    """(config, scale) of a CARN-M state dict, or None; the scale is None for the multi-scale release."""
    if "entry.weight" not in sd or "b1.b1.body.0.weight" not in sd or "exit.weight" not in sd:
        return None
    n, per_group = size_of(sd, "entry.weight"), size_of(sd, "b1.b1.body.0.weight", 1)
    cfg = known(n_feats=n, groups=n // per_group if n and per_group else None)
    if "upsample.up.body.0.weight" not in sd:
        return (cfg, None) if any(k.startswith("upsample.up2.") for k in sd) else None
    first = size_of(sd, "upsample.up.body.0.weight")
    scale = 3 if n and first == 9 * n else (4 if "upsample.up.body.3.weight" in sd else 2)
    return cfg, scale


def check(cfg: Dict[str, Any]) -> None:
    n, groups = whole(cfg, "n_feats"), whole(cfg, "groups")
    if n % groups:
        raise OptionError("groups", groups, f"a divisor of n_feats ({n})")


SPEC = register(ArchSpec(
    name="carn-m",
    cls=CARNM,
    defaults=dict(n_feats=64, groups=4),
    detect=detect,
    validate=check,
    description="CARN-M (Ahn et al. 2018), official weights: a mobile teacher, one file for x2/x3/x4",
    # the cascades keep up to four concatenated copies of the features
    bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * 14 + 7 * 12 * s * s,
    canonicalize=canonicalize,
))
