"""BSRN (Li et al., CVPRW 2022): blueprint separable residual network, an MIT-licensed teacher.

Written from the paper's description, with the official checkpoints' parameter names so their
state dicts (BasicSR `{"params": ...}`) load as they are. Almost every 3x3 convolution is a
blueprint separable one (BSConv-U): a 1x1 pointwise mix without bias, then a per-channel 3x3
with bias. The input is repeated four times along channels before the first BSConv.

Each of the eight blocks (ESDB, efficient separable distillation block) refines its features in
three steps: a 1x1 conv "distils" half the channels, a BSConv with a skip refines the rest;
a fourth BSConv keeps the last half; the four distilled parts are concatenated, fused by a 1x1
conv, re-weighted by enhanced spatial attention (ESA: a strided, max-pooled, low-resolution mask
upsampled bilinearly) and by contrast-aware channel attention (CCA: standard deviation plus mean),
and added to the block's input. All eight block outputs are fused by a 1x1 conv + GELU, a BSConv
adds the head's features back (global skip), and one 3x3 conv + pixel shuffle upsamples.
Input RGB in [0, 1], no mean shift. Inputs under 15 pixels on a side are padded by edge
replication and the result cropped (the official code cannot run them).

Features for distillation: `T1`, `T2`, `T3` are the outputs of blocks 3, 5 and 8 (64 channels at
LR size; block round(j * 8 / 3), the thirds of the depth), paired with SqueezeSR's `S1..S3` by
paper 1's recipe; `B1..B8` name every block.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from . import ArchSpec, register
from .base import SRModel
from .imdn import ContrastChannelAttention, check_attention_width  # IMDN's CCA, which BSRN reuses as it is
from .statedict import StateDict, count, known, scale_from_channels, size_of

# The smallest input side ESA runs on: its stride-2 3x3 conv must leave the 7-pixel pool 7 pixels.
MIN_SIDE = 15


class BSConvU(nn.Module):
    """Blueprint separable convolution: pointwise 1x1 (no bias), then depthwise k x k (bias)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.dw = nn.Conv2d(cout, cout, k, stride=stride, padding=padding, groups=cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.pw(x))


class ESA(nn.Module):
    """Enhanced spatial attention: a sigmoid mask from a strided, pooled, 1/6-resolution branch.

    Its pooling and bilinear upsampling make each output pixel depend on a wide neighbourhood
    (and, near the borders, on the image size), so a crop's result differs from the whole image's."""

    def __init__(self, channels: int = 64):
        super().__init__()
        f = channels // 4
        self.conv1 = nn.Conv2d(channels, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv2 = BSConvU(f, f, 3, stride=2, padding=0)
        self.conv_max = BSConvU(f, f)
        self.conv3 = BSConvU(f, f)
        self.conv3_ = BSConvU(f, f)
        self.conv4 = nn.Conv2d(f, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.conv1(x)
        low = F.max_pool2d(self.conv2(c1), kernel_size=7, stride=3)
        low = F.gelu(self.conv_max(low))
        low = self.conv3_(F.gelu(self.conv3(low)))
        up = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(up + self.conv_f(c1)))


class ESDB(nn.Module):
    """One efficient separable distillation block: three distil/refine steps, 1x1 fusion, ESA, CCA, skip."""

    def __init__(self, n_feats: int = 64):
        super().__init__()
        d = n_feats // 2
        self.c1_d, self.c1_r = nn.Conv2d(n_feats, d, 1), BSConvU(n_feats, n_feats)
        self.c2_d, self.c2_r = nn.Conv2d(n_feats, d, 1), BSConvU(n_feats, n_feats)
        self.c3_d, self.c3_r = nn.Conv2d(n_feats, d, 1), BSConvU(n_feats, n_feats)
        self.c4 = BSConvU(n_feats, d)
        self.c5 = nn.Conv2d(4 * d, n_feats, 1)
        self.esa = ESA(n_feats)
        self.cca = ContrastChannelAttention(n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = []
        r = x
        for distil, refine in ((self.c1_d, self.c1_r), (self.c2_d, self.c2_r), (self.c3_d, self.c3_r)):
            kept.append(F.gelu(distil(r)))
            r = F.gelu(refine(r) + r)
        kept.append(F.gelu(self.c4(r)))
        return self.cca(self.esa(self.c5(torch.cat(kept, dim=1)))) + x


class _PixelShuffleDirect(nn.Module):
    """One 3x3 conv to 3*s*s channels and a pixel shuffle (the official `pixelshuffledirect`)."""

    def __init__(self, n_feats: int, scale: int, out_channels: int = 3):
        super().__init__()
        self.upsampleOneStep = nn.Sequential(
            nn.Conv2d(n_feats, out_channels * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsampleOneStep(x)


class BSRN(SRModel):
    @staticmethod
    def teacher_blocks(blocks: int) -> Tuple[int, int, int]:
        """The blocks T1..T3 name: round(j * blocks / 3), the ends of the depth's thirds (8 -> 3, 5, 8)."""
        return tuple(max(1, (2 * j * blocks + 3) // 6) for j in (1, 2, 3))  # type: ignore[return-value]

    @classmethod
    def feature_names_for(cls, blocks: int, **_: Any) -> Tuple[str, ...]:
        return ("T1", "T2", "T3") + tuple(f"B{i + 1}" for i in range(blocks))

    def __init__(self, scale: int = 2, n_feats: int = 64, blocks: int = 8):
        super().__init__()
        self.scale = scale
        self.blocks = blocks
        self.feature_names = self.feature_names_for(blocks)
        self._t_blocks = self.teacher_blocks(blocks)
        self.fea_conv = BSConvU(3 * 4, n_feats)
        for i in range(blocks):
            setattr(self, f"B{i + 1}", ESDB(n_feats))
        self.c1 = nn.Conv2d(n_feats * blocks, n_feats, 1)
        self.c2 = BSConvU(n_feats, n_feats)
        self.upsampler = _PixelShuffleDirect(n_feats, scale)

    def _forward(self, x: torch.Tensor, names: Tuple[str, ...]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        # ESA's stride-2 conv and 7-pixel pool need 15 pixels a side (the official code fails below):
        # smaller inputs are padded by edge replication and the results cropped. When traced (ONNX,
        # TorchScript) the pad amounts are computed from the input's shape inside the graph, so a
        # graph traced on a larger input still takes a small one.
        h, w = x.shape[-2:]
        if torch.jit.is_tracing():
            ph = torch.clamp(MIN_SIDE - torch.as_tensor(h), min=0)
            pw = torch.clamp(MIN_SIDE - torch.as_tensor(w), min=0)
            padded = True
        else:
            ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
            padded = bool(ph or pw)
        if padded:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        head = self.fea_conv(torch.cat([x] * 4, dim=1))
        outs = []
        t = head
        for i in range(self.blocks):
            t = getattr(self, f"B{i + 1}")(t)
            outs.append(t)
        feats: Dict[str, torch.Tensor] = {}
        for name in names:
            j = int(name[1:])
            f = outs[(self._t_blocks[j - 1] if name[0] == "T" else j) - 1]
            feats[name] = f[..., :h, :w] if padded else f
        out = self.upsampler(self.c2(F.gelu(self.c1(torch.cat(outs, dim=1)))) + head)
        return (out[..., : h * self.scale, : w * self.scale] if padded else out), feats


def detect(sd: StateDict):
    """(config, scale) of a BSRN state dict, or None."""
    if "fea_conv.pw.weight" not in sd or "B1.c1_r.pw.weight" not in sd:
        return None
    if "upsampler.upsampleOneStep.0.weight" not in sd:
        return None  # only the released `pixelshuffledirect` upsampler
    cfg = known(n_feats=size_of(sd, "fea_conv.pw.weight"), blocks=count(sd, r"B(\d+)\."))
    return cfg, scale_from_channels(size_of(sd, "upsampler.upsampleOneStep.0.weight"))


SPEC = register(ArchSpec(
    name="bsrn",
    cls=BSRN,
    defaults=dict(n_feats=64, blocks=8),
    detect=detect,
    validate=check_attention_width,
    description="BSRN (Li et al. 2022), official weights, MIT: a lightweight teacher a CPU can run",
    # every block's output is kept for the final fusion, then concatenated once more; measured
    # 6.1 KB per pixel at x2 and x4 (n_feats 64, 8 blocks) against 6.5 / 7.5 KB here
    bytes_per_pixel=lambda cfg, s: 4 * cfg["n_feats"] * (2 * cfg["blocks"] + 8) + 7 * 12 * s * s,
    # fp16 is safe: its largest activation over Set14 is about 95 (x2 and x4), far below 65504,
    # and the CCA's squares run in float32 under autocast
    supports_half=True,
    # its blueprint convs are depthwise: bf16 autocast measured no faster in training (x0.98, idle
    # 2-core AMX), and as a teacher filling the cache 1.8x slower (so cpu_bf16_fill stays off)
    cpu_bf16_train=False,
))
