"""SwinIR (Liang et al., 2021), lightweight configuration, key-compatible with the official release.

State-dict keys and shapes follow the official `network_swinir.py`, so the release checkpoints
load as they are. The buffers that depend on the training `img_size` (`attn_mask`) and the
`relative_position_index` are not persistent here: they are rebuilt for whatever size comes in.
Only the `pixelshuffledirect` upsampler and `1conv` residual connection of SwinIR-light are built.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import RGB_MEAN, SRModel


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
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    return rel.sum(-1)


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

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # 1, heads, n, n
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.unsqueeze(0) + mask.to(bias.dtype).unsqueeze(1).unsqueeze(0)).expand(b_ // nw, -1, -1, -1, -1)
            bias = bias.reshape(b_, self.num_heads, n, n)
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias
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

    def forward(self, x: torch.Tensor, size: Tuple[int, int], mask: Optional[torch.Tensor]) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.ws), mask if self.shift else None)
        y = window_reverse(y, self.ws, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class BasicLayer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, ws: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio) for i in range(depth)
        )

    def forward(self, x: torch.Tensor, size: Tuple[int, int], mask: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, size, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin layers, a 3x3 conv, and a skip around both."""

    def __init__(self, dim: int, depth: int, num_heads: int, ws: int, mlp_ratio: float):
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, num_heads, ws, mlp_ratio)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor, size: Tuple[int, int], mask: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        y = self.residual_group(x, size, mask).transpose(1, 2).reshape(b, c, size[0], size[1])
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
        self._mask_cache: Dict[tuple, torch.Tensor] = {}
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._mask_cache:
            if len(self._mask_cache) > 16:
                self._mask_cache.clear()
            self._mask_cache[key] = shifted_window_mask(h, w, self.window_size, self.window_size // 2, device)
        return self._mask_cache[key]

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
        mask = self._mask(size[0], size[1], f0.device)
        t = self.patch_embed(f0)
        feats: Dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            t = layer(t, size, mask)
            if i == 0 and "F1" in names:
                feats["F1"] = t.transpose(1, 2).reshape(t.shape[0], -1, size[0], size[1])
        t = self.norm(t).transpose(1, 2).reshape(f0.shape)
        out = self.upsample(self.conv_after_body(t) + f0)
        out = out / self.img_range + mean
        return out[:, :, : h * self.scale, : w * self.scale], feats
