"""What every srkd architecture shares: one call signature for output and named features."""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
from torch import nn

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, as EDSR and SwinIR subtract it


class SRModel(nn.Module):
    """An RGB [0,1] image (N,3,h,w) -> (N,3,s*h,s*w).

    Subclasses implement `_forward(x, names)` returning the output and the requested
    intermediate features, so losses never reach into a model's internals.
    """

    scale: int
    feature_names: Tuple[str, ...] = ()

    @classmethod
    def feature_names_for(cls, **config: Any) -> Tuple[str, ...]:
        """The features a model built with `config` names (`ArchSpec.feature_names`): the class's
        own here; classes whose names depend on the configuration say how, and use it themselves."""
        return cls.feature_names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, ())[0]

    def forward_with_features(
        self, x: torch.Tensor, names: Sequence[str]
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        unknown = [n for n in names if n not in self.feature_names]
        if unknown:
            raise KeyError(f"{type(self).__name__} has no feature {unknown}; it has {list(self.feature_names)}")
        return self._forward(x, tuple(names))

    def _forward(self, x: torch.Tensor, names: Tuple[str, ...]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError


class ResidualBodySR(SRModel):
    """head conv -> blocks (their outputs are the features `{prefix}1..n`) -> body_conv + head skip -> tail.

    Subclasses set `head`, `body` (a ModuleList), `body_conv` and `tail`; the RGB mean is
    subtracted before the head and added back after the tail, as in EDSR.
    """

    feature_prefix = ""

    @classmethod
    def feature_names_for(cls, blocks: int, **_: Any) -> Tuple[str, ...]:
        return tuple(f"{cls.feature_prefix}{i + 1}" for i in range(blocks))

    def _init_mean(self) -> None:
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)

    def _forward(self, x: torch.Tensor, names: Tuple[str, ...]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        mean = self.mean.to(x.dtype)
        h = self.head(x - mean)
        t = h
        feats: Dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.body):
            t = block(t)
            name = f"{self.feature_prefix}{i + 1}"
            if name in names:
                feats[name] = t
        return self.tail(self.body_conv(t) + h) + mean, feats


def pixel_shuffle_upsampler(n_feats: int, scale: int, out_channels: int) -> nn.Sequential:
    """EDSR's upsampler: conv + PixelShuffle, x4 as two x2 stages, ending at `out_channels` features."""
    layers: list = []
    if scale in (2, 4):
        for _ in range({2: 1, 4: 2}[scale]):
            layers += [nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(n_feats, 9 * n_feats, 3, padding=1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"scale {scale} is not supported (2, 3 or 4)")
    layers.append(nn.Conv2d(n_feats, out_channels, 3, padding=1))
    return nn.Sequential(*layers)


class NearestSubpixel(nn.Module):
    """A nearest-neighbour-residual net (`model.learned(x)` + the input repeated per sub-pixel)
    stopped before its pixel shuffle, for int8 export (`runtime.ort.OnnxModel` reads
    `export_metadata` and shuffles). The residual is a one-hot 1x1 conv: an ordinary conv to the
    quantiser, and exact in int8 (weights 1 on the input's 8-bit levels)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.scale = model, model.scale
        s2 = model.scale * model.scale
        base = torch.zeros(3 * s2, 3, 1, 1)
        for c in range(3):
            base[c * s2:(c + 1) * s2, c] = 1.0
        self.register_buffer("base", base)
        self.export_metadata = {"subpixel": True, "column_pairs": 1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.learned(x)[0] + torch.nn.functional.conv2d(x, self.base.to(x.dtype))
