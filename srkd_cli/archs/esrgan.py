"""ESRGAN's generator, RRDBNet (Wang et al., ECCV 2018 workshops), as Real-ESRGAN and most
community upscaling models use it.

Written from the papers' description, with BasicSR's parameter names so its files load as they
are. A 3x3 conv lifts the image to `n_feats` channels; a trunk of `blocks` residual-in-residual
dense blocks follows (RRDB: three residual dense blocks, each five 3x3 convs where conv j sees the
block input and every earlier conv's `growth` channels, LeakyReLU 0.2 after the first four; each
dense block adds 0.2 x its output to its input, and the RRDB adds 0.2 x the third one's output to
its own input); a 3x3 conv closes the trunk and the head's features are added back. Then one
"nearest-neighbour x2 + 3x3 conv + LeakyReLU" stage per factor of two, a 3x3 conv + LeakyReLU at
the output size and a last 3x3 conv to RGB. Input RGB in [0, 1], no mean shift.

Real-ESRGAN's x2 (and x1) models reach their scale by running the same x4 network on a
pixel-unshuffled input (space-to-depth by 2, or 4: `conv_first` takes 12 or 48 channels). Here
that is `unshuffle`: the input is padded on the bottom and right by reflection to a multiple of
it, unshuffled, and the output cropped back, as Real-ESRGAN's own inference pads. The old
ESRGAN x2 files instead have one upsampling stage (`conv_up1` only); both are the same class,
with scale = 2 ** stages / unshuffle.

Key layouts read (`canonicalize`): BasicSR/Real-ESRGAN (`conv_first`, `body.N.rdbK.convJ`,
`conv_body`, `conv_upN`, `conv_hr`, `conv_last`), the ESRGAN repository's RRDBNet_arch
(`RRDB_trunk.N.RDBK.convJ`, `trunk_conv`, `upconvN`, `HRconv`) and the original ESRGAN
"architecture.py" sequential layout (`model.0`, `model.1.sub.N.RDBK.convJ.0`, `model.1.sub.<blocks>`,
then the upsampling convs, the HR conv and the last conv at the higher `model.N` indices).

Features: `B1..Bn` are the RRDB outputs and `T1..T3` the ones at the end of each third of the trunk
(`n_feats` channels at the input size divided by `unshuffle`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from . import ArchSpec, register
from .base import SRModel
from .options import OptionError, whole

SLOPE = 0.2  # every LeakyReLU of ESRGAN
RES_SCALE = 0.2  # the residual scaling of dense blocks and RRDBs
UNSHUFFLE_CHANNELS = {3: 1, 12: 2, 48: 4}  # conv_first's input channels -> Real-ESRGAN's pixel-unshuffle factor


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, SLOPE, inplace=True)


class DenseBlock(nn.Module):
    """Five 3x3 convs, each on the concatenation of the input and all earlier outputs."""

    def __init__(self, n_feats: int, growth: int):
        super().__init__()
        for j in range(4):
            setattr(self, f"conv{j + 1}", _conv(n_feats + j * growth, growth))
        self.conv5 = _conv(n_feats + 4 * growth, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = x
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            seen = torch.cat((seen, _lrelu(conv(seen))), 1)
        return x + RES_SCALE * self.conv5(seen)


class RRDB(nn.Module):
    """Three dense blocks in a row, the whole scaled by 0.2 and added to the input."""

    def __init__(self, n_feats: int, growth: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (DenseBlock(n_feats, growth) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RES_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


def upsample_stages(scale: int, unshuffle: int) -> int:
    """How many nearest x2 stages make `scale` after unshuffling by `unshuffle`; ConfigError if none do."""
    total = scale * unshuffle
    stages = int(round(math.log2(total))) if total > 0 else 0
    if unshuffle not in UNSHUFFLE_CHANNELS.values() or stages < 1 or 2 ** stages != total:
        raise ConfigError(f"esrgan: x{scale} with unshuffle={unshuffle} is no RRDBNet layout (it upsamples by powers "
                          "of two after an unshuffle of 1, 2 or 4: x2 or x4)")
    return stages


class RRDBNet(SRModel):
    @staticmethod
    def feature_names_for(blocks: int, **_: Any) -> Tuple[str, ...]:
        return tuple(f"T{j + 1}" for j in range(min(3, blocks))) + tuple(f"B{i + 1}" for i in range(blocks))

    def __init__(self, scale: int = 4, n_feats: int = 64, blocks: int = 23, growth: int = 32, unshuffle: int = 1):
        if n_feats < 1 or blocks < 1 or growth < 1:
            raise ConfigError(f"esrgan: needs n_feats, blocks and growth >= 1 (got {n_feats}, {blocks}, {growth})")
        super().__init__()
        self.scale, self.unshuffle, self.blocks = scale, unshuffle, blocks
        self.stages = upsample_stages(scale, unshuffle)
        self.feature_names = self.feature_names_for(blocks)
        # T1..T3: the last block of each third of the trunk
        self._taps = {(j + 1) * blocks // min(3, blocks): f"T{j + 1}" for j in range(min(3, blocks))}
        self.conv_first = _conv(3 * unshuffle * unshuffle, n_feats)
        self.body = nn.Sequential(*(RRDB(n_feats, growth) for _ in range(blocks)))
        self.conv_body = _conv(n_feats, n_feats)
        for i in range(self.stages):
            setattr(self, f"conv_up{i + 1}", _conv(n_feats, n_feats))
        self.conv_hr = _conv(n_feats, n_feats)
        self.conv_last = _conv(n_feats, 3)

    def _forward(self, x: torch.Tensor, names: Tuple[str, ...]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        h, w = x.shape[-2:]
        u = self.unshuffle
        if u > 1:
            ph, pw = (u - h % u) % u, (u - w % u) % u
            if ph or pw:  # reflection needs more pixels than it pads; a 1-pixel strip is replicated
                x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
            x = F.pixel_unshuffle(x, u)
        head = self.conv_first(x)
        t = head
        feats: Dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.body, start=1):
            t = block(t)
            for name in (f"B{i}", self._taps.get(i)):
                if name in names:
                    feats[name] = t
        t = head + self.conv_body(t)
        for i in range(self.stages):
            t = _lrelu(getattr(self, f"conv_up{i + 1}")(F.interpolate(t, scale_factor=2.0, mode="nearest")))
        out = self.conv_last(_lrelu(self.conv_hr(t)))
        if u > 1:
            out = out[..., : h * self.scale, : w * self.scale]
        return out, feats


def receptive_field(cfg: Mapping, scale: int) -> int:
    """Input pixels beyond a pixel that can change its output, counting the 3x3 convs on the longest
    path: before upsampling each reaches `unshuffle` input pixels (the head, five per dense block, the
    trunk's last conv), after stage i u/2**i, at the output size 1/scale; plus the unshuffle block."""
    u = int(cfg["unshuffle"])
    stages = upsample_stages(scale, u)
    lr = u * (2 + 15 * int(cfg["blocks"]))
    hr = sum(u / 2 ** i for i in range(1, stages + 1)) + 2 / scale
    return int(math.ceil(lr + hr)) + (u - 1)


# ----------------------------------------------------------------------------- key layouts

_ESRGAN_REPO = (  # the ESRGAN repository's RRDBNet_arch.py names -> BasicSR's
    (re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.(conv\d)\.(weight|bias)$"), r"body.\1.rdb\2.\3.\4"),
    (re.compile(r"^trunk_conv\.(weight|bias)$"), r"conv_body.\1"),
    (re.compile(r"^upconv(\d+)\.(weight|bias)$"), r"conv_up\1.\2"),
    (re.compile(r"^HRconv\.(weight|bias)$"), r"conv_hr.\1"),
)
_OLD_BLOCK = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.(conv\d)\.0\.(weight|bias)$")
_OLD_TRUNK = re.compile(r"^model\.1\.sub\.(\d+)\.(weight|bias)$")
_OLD_TOP = re.compile(r"^model\.(\d+)\.(weight|bias)$")


def layout(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Which RRDBNet key layout `sd` is in: 'basicsr', 'esrgan-repo', 'esrgan-old', or None."""
    if "conv_first.weight" in sd and "body.0.rdb1.conv1.weight" in sd:
        return "basicsr"
    if "conv_first.weight" in sd and "RRDB_trunk.0.RDB1.conv1.weight" in sd:
        return "esrgan-repo"
    if "model.0.weight" in sd and "model.1.sub.0.RDB1.conv1.0.weight" in sd:
        return "esrgan-old"
    return None


LAYOUT_NAMES = {
    "basicsr": "BasicSR / Real-ESRGAN (conv_first, body.N.rdbK.convJ, conv_up*, conv_hr, conv_last)",
    "esrgan-repo": "ESRGAN repository (RRDB_trunk.N.RDBK.convJ, trunk_conv, upconv*, HRconv)",
    "esrgan-old": "original ESRGAN (model.0, model.1.sub.N.RDBK.convJ.0, ... model.N)",
}


def layout_name(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """`sd`'s key layout in words (`ArchSpec.layout`), or None."""
    return LAYOUT_NAMES.get(layout(sd) or "")


def canonicalize(sd: Mapping[str, torch.Tensor], scale: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """`sd` in BasicSR's names, whichever of the known layouts it is in (unknown keys pass through,
    for the loader to report)."""
    kind = layout(sd)
    if kind == "esrgan-repo":
        out = {}
        for k, v in sd.items():
            for rx, repl in _ESRGAN_REPO:
                if rx.match(k):
                    k = rx.sub(repl, k)
                    break
            out[k] = v
        return out
    if kind != "esrgan-old":
        return dict(sd)
    trunk = sorted({int(m.group(1)) for k in sd if (m := _OLD_TRUNK.match(k))})
    top = sorted({int(m.group(1)) for k in sd if (m := _OLD_TOP.match(k))} - {0})
    if len(trunk) != 1 or len(top) < 3:
        raise CheckpointError("looks like an original-layout ESRGAN but its trunk conv (model.1.sub.N) or its "
                              "upsampling / output convs (model.3 ...) are not where that layout has them")
    # The convs after the trunk, in order: one per upsampling stage, then the HR conv, then the last.
    names = [f"conv_up{i + 1}" for i in range(len(top) - 2)] + ["conv_hr", "conv_last"]
    rename = {0: "conv_first", **dict(zip(top, names))}
    out = {}
    for k, v in sd.items():
        if (m := _OLD_BLOCK.match(k)):
            out[f"body.{m.group(1)}.rdb{m.group(2)}.{m.group(3)}.{m.group(4)}"] = v
        elif (m := _OLD_TRUNK.match(k)):
            out[f"conv_body.{m.group(2)}"] = v
        elif (m := _OLD_TOP.match(k)) and int(m.group(1)) in rename:
            out[f"{rename[int(m.group(1))]}.{m.group(2)}"] = v
        else:
            out[k] = v
    return out


def detect(sd: Mapping[str, torch.Tensor]):
    """(config, scale) of an RRDBNet state dict in any known layout, or None."""
    if layout(sd) is None:
        return None
    sd = canonicalize(sd)
    first = sd.get("conv_first.weight")
    if not isinstance(first, torch.Tensor) or first.dim() != 4:
        return None
    cin = int(first.shape[1])
    if cin not in UNSHUFFLE_CHANNELS:
        raise CheckpointError(f"looks like esrgan (RRDBNet) but conv_first takes {cin} channels; srkd runs RGB "
                              "models (3, or 12 / 48 with Real-ESRGAN's pixel unshuffle)")
    u = UNSHUFFLE_CHANNELS[cin]
    stages = len({m.group(1) for k in sd if (m := re.match(r"conv_up(\d+)\.(weight|bias)$", k))})
    growth = sd.get("body.0.rdb1.conv1.weight")
    cfg = dict(
        n_feats=int(first.shape[0]),
        blocks=len({m.group(1) for k in sd if (m := re.match(r"body\.(\d+)\.", k))}),
        unshuffle=u,
    )
    if isinstance(growth, torch.Tensor) and growth.dim() == 4:
        cfg["growth"] = int(growth.shape[0])
    if stages < 1:
        raise CheckpointError("looks like esrgan (RRDBNet) but has no upsampling convs (conv_up1.weight ...)")
    if (2 ** stages) % u:
        raise CheckpointError(f"looks like esrgan (RRDBNet) but has {stages} upsampling conv(s) (conv_up*) "
                              f"after an unshuffle by {u}: no integer scale")
    return cfg, 2 ** stages // u


def check(cfg: Dict[str, Any]) -> None:
    if whole(cfg, "unshuffle") not in (1, 2, 4):
        raise OptionError("unshuffle", cfg["unshuffle"], "1, 2 or 4 (Real-ESRGAN's pixel-unshuffle input)")


def bytes_per_pixel(cfg: Dict[str, Any], s: int) -> int:
    """RRDBNet's peak float32 bytes per input pixel: the dense blocks' concatenations at the
    unshuffled size, then the nearest x2 stages, whose maps at the output size dominate.

    Measured with scripts/arch_memory.py (peak-RSS rise of one forward pass on a 128x128 input in a
    fresh process, one thread, CPU): 64 features / 23 blocks / growth 32: x4 23.0k B, x2 (unshuffle 2)
    3.9k; 32 / 2 / 16 (the fixture): x4 7.7k, x2 1.9k. This estimate: 25.0k, 4.2k, 12.6k, 2.1k."""
    n, g, u = cfg["n_feats"], cfg["growth"], cfg["unshuffle"]
    return int(4 * ((5 * n + 8 * g) / (u * u) + (s + 1.5) * n * s * s) + 12 * s * s)


SPEC = register(ArchSpec(
    name="esrgan",
    cls=RRDBNet,
    defaults=dict(n_feats=64, blocks=23, growth=32, unshuffle=1),
    detect=detect,
    validate=check,
    description="ESRGAN / Real-ESRGAN RRDBNet (Wang et al. 2018/2021): most community upscaling models; "
                "BasicSR and original ESRGAN key layouts, x2 pixel-unshuffle input",
    bytes_per_pixel=bytes_per_pixel,
    canonicalize=canonicalize,
    # tiles start on the unshuffle grid, so a tile unshuffles as the whole image does
    window_multiple=lambda cfg: int(cfg["unshuffle"]),
    receptive_field=receptive_field,
    layout=layout_name,
    # as a teacher, 64/23/32 ran 2.5x faster under bf16 autocast (AMX, one thread), 46 dB from fp32
    cpu_bf16_fill=True,
))
