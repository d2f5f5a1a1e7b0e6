"""RepSR: a plain CNN for training with `--reparam`, in the style of SESR (collapsible linear blocks).

At inference it is nothing but convolutions and ReLUs at LR size: a 5x5 head to `n_feats`
channels, `layers` 3x3 convs each followed by ReLU, a long skip from the head, a 5x5 tail to
3·s² channels, the input added to every sub-pixel channel (nearest-neighbour upsampling as the
residual base) and one pixel shuffle. Trained with `--reparam W`, every conv is an
over-parameterised linear block (archs/reparam.py) that collapses back into this graph.

The body convs start as identity plus a small random kernel (SESR's short residuals, folded into
the kernel) and the tail starts small, so an untrained model is close to nearest-neighbour
upsampling and deep stacks train from the first step. Features `S1..S3` are the body outputs at
a third, two thirds and the end of the stack (for paper 1's feature recipe).
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import ArchSpec, register
from .base import NearestSubpixel, SRModel
from .options import whole
from .statedict import StateDict, count, scale_from_channels, size_of


class RepSR(SRModel):
    feature_names = ("S1", "S2", "S3")

    def __init__(self, scale: int = 2, n_feats: int = 16, layers: int = 9):
        if n_feats < 1 or layers < 3:
            raise ConfigError(f"repsr: needs n_feats >= 1 and layers >= 3 (got n_feats={n_feats}, layers={layers})")
        super().__init__()
        self.scale = scale
        self._taps = {layers // 3: "S1", 2 * layers // 3: "S2", layers: "S3"}
        self.head = nn.Conv2d(3, n_feats, 5, padding=2)
        self.body = nn.ModuleList(nn.Conv2d(n_feats, n_feats, 3, padding=1) for _ in range(layers))
        self.tail = nn.Conv2d(n_feats, 3 * scale * scale, 5, padding=2)
        with torch.no_grad():
            for conv in self.body:
                conv.weight.mul_(0.1)
                conv.weight[:, :, 1, 1] += torch.eye(n_feats)
            self.tail.weight.mul_(0.1)
            self.tail.bias.zero_()

    def learned(self, x: torch.Tensor, names: Tuple[str, ...] = ()) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The tail's output before the residual base is added and the pixels shuffled, and the named features."""
        h = self.head(x)
        t = h
        feats: Dict[str, torch.Tensor] = {}
        for i, conv in enumerate(self.body, start=1):
            t = F.relu(conv(t))
            name = self._taps.get(i)
            if name in names:
                feats[name] = t
        return self.tail(t + h), feats

    def _forward(self, x: torch.Tensor, names: Tuple[str, ...]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        out, feats = self.learned(x, names)
        s = self.scale
        # Sub-pixel channel c*s*s+i lands in output channel c: repeating each input channel s*s
        # times makes the residual base nearest-neighbour upsampling.
        return F.pixel_shuffle(out + x.repeat_interleave(s * s, dim=1), s), feats


RepSRSubpixel = NearestSubpixel  # the int8 form (archs/base.py)


def int8_form(model: RepSR, crops: Sequence[np.ndarray], recipe: Dict[str, Any]) -> nn.Module:
    """What quantize.py quantises (`ArchSpec.int8`); the calibration crops and recipe are not needed."""
    return RepSRSubpixel(model)


def receptive_radius(model: RepSR) -> int:
    """5x5 head and tail, one pixel per 3x3 layer (`ArchSpec.receptive_radius`)."""
    return len(model.body) + 4


def detect(sd: StateDict):
    """(config, scale) of a RepSR state dict, or None."""
    head, tail = size_of(sd, "head.weight"), size_of(sd, "tail.weight")
    if head is None or tail is None or size_of(sd, "body.0.weight", 3) != 3 or size_of(sd, "head.weight", 3) != 5:
        return None
    return dict(n_feats=head, layers=count(sd, r"body\.(\d+)\.")), scale_from_channels(tail)


def check(cfg: Dict[str, Any]) -> None:
    whole(cfg, "layers", least=3)  # S1..S3 tap a third, two thirds and the end of the stack


SPEC = register(ArchSpec(
    name="repsr",
    cls=RepSR,
    defaults=dict(n_feats=16, layers=9),
    detect=detect,
    validate=check,
    description="RepSR (srkd): a plain 3x3-conv student trained re-parameterised (--reparam), SESR-style",
    caveat="repsr is srkd's own plain network and weights, not the published RepSR (Wang et al., "
           "ACM MM 2022) nor its weights (docs/zoo.md)",
    # two feature maps live at once, plus the s*s*3 sub-pixel output and its input copy
    bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * 4 + 2 * 12 * s * s,
    train_defaults={"patch": 48, "lr": 1e-3},
    # exact pieces pay, so auto runs onnxruntime
    receptive_radius=receptive_radius,
    int8=int8_form,
    expandable=True,
))
