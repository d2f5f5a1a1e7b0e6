"""SwinIR (Liang et al., 2021), lightweight configuration, key-compatible with the official release.

State-dict keys and shapes follow the official `network_swinir.py`, so the release checkpoints
load as they are. The buffers that depend on the training `img_size` (`attn_mask`) and the
`relative_position_index` are not persistent here: they are rebuilt for whatever size comes in.
Only the `pixelshuffledirect` upsampler and `1conv` residual connection of SwinIR-light are built.

Two attention paths (`SwinIR.set_attention`, docs/performance.md "SwinIR training step on the CPU"):
- "exact" (the default): the official arithmetic (scaled q @ k^T + bias [+ shift mask], softmax,
  @ v), bit-identical to the code before issue 32, so the conformance fixtures hold as before.
  The bias and shift mask broadcast over the images instead of being copied per image.
- "fused": `F.scaled_dot_product_attention` with the relative position bias (and the shift mask)
  as a float additive mask; no (windows, heads, 64, 64) score tensor is kept for backward. It
  agrees with the exact path to 1e-5 in fp32, forward and gradient (tests/test_swinir_speed_path.py),
  but measured no faster per training step on the 2-core CPU in fp32 and slower under bf16
  autocast, so it is opt-in (e.g. to save the score memory, or on a GPU once measured there).
The cyclic shift and window partition of the shifted blocks are one `index_select` each way
instead of roll + partition + reverse + roll (same values, fewer copies).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import ArchSpec, register
from .base import RGB_MEAN, SRModel
from .options import OptionError, number, whole
from .statedict import StateDict, count, known, scale_from_channels, size_of


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


@lru_cache(maxsize=8)
def _relative_position_index(ws: int) -> torch.Tensor:
    # On the CPU whatever the default device: a model built on "meta" (checkpoint.py's shape check) must not cache a meta tensor
    cpu = torch.device("cpu")
    coords = torch.stack(torch.meshgrid(torch.arange(ws, device=cpu), torch.arange(ws, device=cpu), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    return rel.sum(-1)


@lru_cache(maxsize=16)
def _shift_index(h: int, w: int, ws: int, shift: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token orders for a shifted block: `tokens[:, perm]` = partition(roll(-shift)) as (b, nW*ws*ws, c);
    `windows[:, inv]` undoes it (reverse, then roll(+shift))."""
    idx = torch.arange(h * w, device="cpu").view(1, h, w, 1)  # cached: on the CPU whatever the default device
    perm = window_partition(torch.roll(idx, shifts=(-shift, -shift), dims=(1, 2)), ws).reshape(-1)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(h * w, device="cpu")
    return perm, inv


class Windows(NamedTuple):
    """What every block of one forward shares: the shift mask, the shifted token orders, the path."""

    mask: torch.Tensor  # (nW, n, n), -100 across shifted regions
    perm: torch.Tensor
    inv: torch.Tensor
    fused: bool


ATTENTION_MODES = ("exact", "fused")


def shifted_window_mask(h: int, w: int, ws: int, shift: int, device=None) -> torch.Tensor:
    """(nW, ws*ws, ws*ws) additive mask keeping attention inside each shifted region (-100 elsewhere)."""
    img = torch.zeros(1, h, w, 1, device=device)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    mw = window_partition(img, ws).squeeze(-1)
    mask = mw.unsqueeze(1) - mw.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, num_heads: int):
        super().__init__()
        self.ws, self.num_heads = ws, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", _relative_position_index(ws).clone(), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor], fused: bool = False) -> torch.Tensor:
        """x: (b*nW, n, c) windows in (image, window) order; mask: (nW, n, n) for shifted blocks."""
        b_, n, c = x.shape
        heads, hd = self.num_heads, c // self.num_heads
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # 1, heads, n, n
        nw = 1 if mask is None else mask.shape[0]
        if mask is not None:
            bias = bias.unsqueeze(0) + mask.to(bias.dtype).unsqueeze(1).unsqueeze(0)  # 1, nW, heads, n, n
        if fused:
            # (b, nW*heads, n, hd): the combined bias then broadcasts over images without a copy per image.
            qkv = self.qkv(x).view(b_ // nw, nw, n, 3, heads, hd).permute(3, 0, 1, 4, 2, 5)
            qkv = qkv.reshape(3, b_ // nw, nw * heads, n, hd)
            am = bias.reshape(1, nw * heads, n, n)
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=am.to(qkv.dtype), scale=self.scale)
            out = out.view(b_, heads, n, hd)
        else:
            qkv = self.qkv(x).reshape(b_, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if mask is not None:  # the same sums as adding the bias expanded per image, without the copy
                attn = (attn.view(b_ // nw, nw, heads, n, n) + bias).view(b_, heads, n, n)
            else:
                attn = attn + bias
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b_, n, c))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, ws: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, size: Tuple[int, int], win: Windows) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        ws = self.ws
        y = self.norm1(x)
        if self.shift:  # roll(-shift) + partition, and back, as one gather each way
            y = self.attn(y.index_select(1, win.perm).view(-1, ws * ws, c), win.mask, win.fused)
            y = y.view(b, h * w, c).index_select(1, win.inv)
        else:
            y = self.attn(window_partition(y.view(b, h, w, c), ws), None, win.fused)
            y = window_reverse(y, ws, h, w).reshape(b, h * w, c)
        x = x + y
        return x + self.mlp(self.norm2(x))


class BasicLayer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, ws: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio) for i in range(depth)
        )

    def forward(self, x: torch.Tensor, size: Tuple[int, int], win: Windows) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, size, win)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin layers, a 3x3 conv, and a skip around both."""

    def __init__(self, dim: int, depth: int, num_heads: int, ws: int, mlp_ratio: float):
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, num_heads, ws, mlp_ratio)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor, size: Tuple[int, int], win: Windows) -> torch.Tensor:
        b, _, c = x.shape
        y = self.residual_group(x, size, win).transpose(1, 2).reshape(b, c, size[0], size[1])
        return self.conv(y).flatten(2).transpose(1, 2) + x


class PatchEmbed(nn.Module):
    """Only a LayerNorm over tokens; kept as a module so the official `patch_embed.norm` keys match."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.flatten(2).transpose(1, 2))


class SwinIR(SRModel):
    feature_names = ("F1",)
    attention = "exact"  # or "fused": see the module docstring

    def __init__(
        self,
        scale: int = 2,
        blocks: int = 4,
        embed_dim: int = 60,
        depth: int = 6,
        num_heads: int = 6,
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        img_range: float = 1.0,
    ):
        super().__init__()
        self.scale, self.window_size, self.img_range = scale, window_size, img_range
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim)
        self.layers = nn.ModuleList(RSTB(embed_dim, depth, num_heads, window_size, mlp_ratio) for _ in range(blocks))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.upsample = nn.Sequential(nn.Conv2d(embed_dim, 3 * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))
        self._mask_cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_attention(self, mode: str) -> "SwinIR":
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, not {mode!r}")
        self.attention = mode
        return self

    def _windows(self, h: int, w: int, device: torch.device, fused: bool) -> Windows:
        key = (h, w, str(device))
        if key not in self._mask_cache:
            if len(self._mask_cache) > 16:
                self._mask_cache.clear()
            ws = self.window_size
            perm, inv = _shift_index(h, w, ws, ws // 2)
            self._mask_cache[key] = (shifted_window_mask(h, w, ws, ws // 2, device), perm.to(device), inv.to(device))
        return Windows(*self._mask_cache[key], fused)

    def _forward(self, x: torch.Tensor, names: Sequence[str]):
        h, w = x.shape[2:]
        ws = self.window_size
        ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        f0 = self.conv_first(x)
        size = (f0.shape[2], f0.shape[3])
        win = self._windows(size[0], size[1], f0.device, self.attention == "fused")
        t = self.patch_embed(f0)
        feats: Dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            t = layer(t, size, win)
            if i == 0 and "F1" in names:
                feats["F1"] = t.transpose(1, 2).reshape(t.shape[0], -1, size[0], size[1])
        t = self.norm(t).transpose(1, 2).reshape(f0.shape)
        out = self.upsample(self.conv_after_body(t) + f0)
        out = out / self.img_range + mean
        return out[:, :, : h * self.scale, : w * self.scale], feats


def detect(sd: StateDict):
    """(config, scale) of a SwinIR-light state dict, or None."""
    if "conv_first.weight" not in sd or "layers.0.residual_group.blocks.0.attn.qkv.weight" not in sd:
        return None
    if "upsample.0.weight" not in sd or "conv_before_upsample.0.weight" in sd:
        return None  # classical/real-world SwinIR upsamplers are not the lightweight model
    width = size_of(sd, "conv_first.weight")
    table = "layers.0.residual_group.blocks.0.attn.relative_position_bias_table"
    rows, hidden = size_of(sd, table), size_of(sd, "layers.0.residual_group.blocks.0.mlp.fc1.weight")
    cfg = known(
        blocks=count(sd, r"layers\.(\d+)\."),
        embed_dim=width,
        depth=count(sd, r"layers\.0\.residual_group\.blocks\.(\d+)\.") or None,
        num_heads=size_of(sd, table, 1),
        window_size=None if rows is None else (math.isqrt(rows) + 1) // 2,
        mlp_ratio=None if hidden is None or not width else hidden / width,
    )
    return cfg, scale_from_channels(size_of(sd, "upsample.0.weight"))


def check(cfg: Dict[str, Any]) -> None:
    width, heads = whole(cfg, "embed_dim"), whole(cfg, "num_heads")
    if width % heads:
        raise OptionError("num_heads", heads, f"a divisor of embed_dim ({width})")
    if int(width * number(cfg, "mlp_ratio")) < 1:  # the MLP's hidden width
        raise OptionError("mlp_ratio", cfg["mlp_ratio"], f"a number >= 1/embed_dim ({1 / width:.3g})")


SPEC = register(ArchSpec(
    name="swinir",
    cls=SwinIR,
    defaults=dict(blocks=4, embed_dim=60, depth=6, num_heads=6, window_size=8, mlp_ratio=2.0, img_range=1.0),
    detect=detect,
    validate=check,
    description="SwinIR-light (paper 2): 4 RSTBs as teacher, 1-3 RSTBs as students",
    # the attention scores of every window dominate
    bytes_per_pixel=lambda cfg, s: 4 * (24 * cfg["embed_dim"] + 7 * cfg["num_heads"] * cfg["window_size"] ** 2)
    + 10 * 12 * s * s,
    train_defaults={"patch": 64, "lr": 2e-4},  # paper 2 and SwinIR
    supports_half=False,
    channels_last=False,
    window_multiple=lambda cfg: int(cfg["window_size"]),
))
