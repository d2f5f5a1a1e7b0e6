"""Real-ESRGAN's compact network, SRVGGNetCompact (Wang et al., Real-ESRGAN, 2021): the
realesr-general / animevideo family and many community models.

Written from the description and BasicSR's parameter names, so its files load as they are. A
plain VGG-style stack at the input size: a 3x3 conv to `n_feats` channels and an activation, then
`convs` times a 3x3 conv and an activation, then a 3x3 conv to 3 x scale^2 channels and one pixel
shuffle. The input, upsampled by nearest neighbour, is added to the result: the network learns
the residual over nearest-neighbour upsampling. All of it lives in one `body` list (convs at even
indices, activations at odd ones), which is how the files name it.

The activation is PReLU (one slope per channel: the file holds `body.1.weight` ...), ReLU, or
LeakyReLU with slope 0.1. ReLU and LeakyReLU leave no tensors in a file, so a file without PReLU
slopes cannot tell which; `detect` assumes ReLU and says so (`assumed`), and `--set act=leakyrelu`
picks the other.

Every layer is a 3x3 conv at the input size, so a pixel's output depends on `convs + 2` input
pixels around it: exact cache-sized pieces pay on the CPU (`runtime.tiles.HaloTiles`), and
`CompactSubpixel` stops before the pixel shuffle for the int8 path, as RepSR's does.

Features: `T1..T3` are the activations at the end of each third of the body convs (`n_feats`
channels at the input size).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import ArchSpec, register
from .base import NearestSubpixel, SRModel
from .options import OptionError

ACTS = ("prelu", "relu", "leakyrelu")
LEAKY_SLOPE = 0.1  # Real-ESRGAN's LeakyReLU slope in this network
ASSUMED_ACT = "relu"  # what a file without PReLU slopes is taken to use


def _act(kind: str, n_feats: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(num_parameters=n_feats)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)


class SRVGGNetCompact(SRModel):
    @staticmethod
    def feature_names_for(convs: int, **_: Any) -> Tuple[str, ...]:
        return ("T1", "T2", "T3") if convs >= 3 else ()

    def __init__(self, scale: int = 4, n_feats: int = 64, convs: int = 16, act: str = "prelu"):
        act = str(act).lower().replace("_", "").replace("-", "")
        if act not in ACTS:
            raise ConfigError(f"compact: act={act}: choose {', '.join(ACTS)}")
        if n_feats < 1 or convs < 0:
            raise ConfigError(f"compact: needs n_feats >= 1 and convs >= 0 (got n_feats={n_feats}, convs={convs})")
        super().__init__()
        self.scale, self.convs, self.act = scale, convs, act
        self.feature_names = self.feature_names_for(convs)
        # the activation after body conv k (k = 1..convs) sits at index 2k + 1
        self._taps = {2 * max(1, (j + 1) * convs // 3) + 1: f"T{j + 1}" for j in range(3)} if convs >= 3 else {}
        layers: List[nn.Module] = [nn.Conv2d(3, n_feats, 3, padding=1), _act(act, n_feats)]
        for _ in range(convs):
            layers += [nn.Conv2d(n_feats, n_feats, 3, padding=1), _act(act, n_feats)]
        layers.append(nn.Conv2d(n_feats, 3 * scale * scale, 3, padding=1))
        self.body = nn.ModuleList(layers)

    def learned(self, x: torch.Tensor, names: Tuple[str, ...] = ()) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The last conv's output (3 x scale^2 sub-pixel channels), before the base and the shuffle."""
        t = x
        feats: Dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.body):
            t = layer(t)
            name = self._taps.get(i)
            if name in names:
                feats[name] = t  # the next layer is a conv: nothing writes over it in place
        return t, feats

    def _forward(self, x: torch.Tensor, names: Tuple[str, ...]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        out, feats = self.learned(x, names)
        s = self.scale
        # Repeating each input channel s*s times before the shuffle is nearest-neighbour upsampling.
        return F.pixel_shuffle(out + x.repeat_interleave(s * s, dim=1), s), feats


CompactSubpixel = NearestSubpixel  # the int8 form (archs/base.py)


def graph_form(model: SRVGGNetCompact) -> nn.Module:
    """What onnxruntime runs: the network without its pixel shuffle (OnnxModel shuffles)."""
    return CompactSubpixel(model)


def int8_form(model: SRVGGNetCompact, crops: Sequence[np.ndarray], recipe: Dict[str, Any]) -> nn.Module:
    """What quantize.py quantises (`ArchSpec.int8`)."""
    return CompactSubpixel(model)


def receptive_radius(model: nn.Module) -> int:
    """Input pixels beyond a pixel that can change its output: one per 3x3 conv, all at the input size."""
    return int(model.convs) + 2


def has_prelu(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether the file holds PReLU slopes: 1-D weights at odd `body` indices."""
    return any(i % 2 and isinstance(sd[f"body.{i}.weight"], torch.Tensor) and sd[f"body.{i}.weight"].dim() == 1
               for i in _body_indices(sd))


def _body_indices(sd: Mapping[str, torch.Tensor]) -> List[int]:
    return sorted({int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.weight$", k))})


def detect(sd: Mapping[str, torch.Tensor]):
    """(config, scale) of an SRVGGNetCompact state dict, or None. Only `body.N` keys, the first a
    3x3 conv from 3 channels; PReLU slopes are the 1-D `body.<odd>.weight` tensors."""
    first = sd.get("body.0.weight")
    if not isinstance(first, torch.Tensor) or first.dim() != 4 or tuple(first.shape[1:]) != (3, 3, 3):
        return None
    if any(not k.startswith("body.") for k in sd):
        return None
    idx = _body_indices(sd)
    last = idx[-1]
    prelu = has_prelu(sd)
    # prelu: 0, 1, 2, 3, ..., last (= 2 * convs + 2); relu/leakyrelu: 0, 2, ..., last
    cfg = dict(n_feats=int(first.shape[0]), convs=max(0, (last - 2) // 2), act="prelu" if prelu else ASSUMED_ACT)
    tail = sd.get(f"body.{last}.weight")
    scale = None
    if isinstance(tail, torch.Tensor) and tail.dim() == 4:
        out = int(tail.shape[0])
        s = int(round((out / 3) ** 0.5))
        scale = s if s >= 1 and 3 * s * s == out else None
    return cfg, scale


def assumed(sd: Mapping[str, torch.Tensor], cfg: Mapping[str, Any]) -> Dict[str, str]:
    """What the tensors cannot tell and detection assumed (`ArchSpec.assumed`): option -> why."""
    if has_prelu(sd):
        return {}
    return {"act": f"the file holds no PReLU slopes, so its activation is ReLU or LeakyReLU({LEAKY_SLOPE}), which "
                   f"leave no tensors; assumed act={cfg.get('act', ASSUMED_ACT)} (--set act=leakyrelu or act=relu to choose)"}


def layout_name(sd: Mapping[str, torch.Tensor]) -> str:
    """The file's key layout in words (`ArchSpec.layout`)."""
    return "Real-ESRGAN SRVGGNetCompact (body.N: convs at even N" + (", PReLU slopes at odd N)" if has_prelu(sd) else ", no PReLU)")


def check(cfg: Dict[str, Any]) -> None:
    if cfg["act"] not in ACTS:
        raise OptionError("act", cfg["act"], ", ".join(ACTS))


def bytes_per_pixel(cfg: Dict[str, Any], s: int) -> int:
    """SRVGGNetCompact's peak float32 bytes per input pixel: a few feature maps (oneDNN reorders
    included) and the sub-pixel output with its nearest-neighbour base. Measured as for ESRGAN:
    64 features / 16 convs x4 1.5k B, x2 1.7k; 64 / 32 x4 1.2k, x2 1.5k; 16 / 4 x4 1.2k, x2 0.6k.
    This estimate: 2.8k, 2.0k, 2.8k, 2.0k, 1.4k, 0.7k."""
    return 4 * (7 * cfg["n_feats"] + 5 * 3 * s * s)


SPEC = register(ArchSpec(
    name="compact",
    cls=SRVGGNetCompact,
    defaults=dict(n_feats=64, convs=16, act="prelu"),
    detect=detect,
    validate=check,
    description="Real-ESRGAN Compact, SRVGGNetCompact (realesr-general / animevideo): a plain 3x3-conv "
                "network at the input size",
    bytes_per_pixel=bytes_per_pixel,
    graph_form=graph_form,
    # 3x3 convs at the input size only: exact cache-sized pieces pay, so auto runs onnxruntime
    receptive_radius=receptive_radius,
    receptive_field=lambda cfg, s: int(cfg["convs"]) + 2,
    int8=int8_form,
    assumed=assumed,
    layout=layout_name,
    # as a teacher, 64x16 ran 1.7x faster under bf16 autocast (AMX, one thread), 65 dB from fp32
    cpu_bf16_fill=True,
))
