"""Pixel-shuffle copies: a sub-pixel output (N, c*s*s, h, w) written into its image in one pass.

Also for the column-paired layout of `archs.squeezesr_fused._paired_conv` (two neighbouring columns per
output pixel, channels ordered colour, sub-row, p, sub-column), which a runtime that copies the
result into place anyway can undo while it copies (`tiles.HaloTiles`, `ort.OnnxModel`).
"""

from __future__ import annotations

import torch


def _by_pair(y: torch.Tensor, scale: int) -> torch.Tensor:
    """(N, colour, sub-row, p, sub-column, h, J) view of a `_paired_conv` output."""
    return y.unflatten(1, (-1, scale, 2, scale))


def unpair_columns(y: torch.Tensor, width: int, scale: int, pairs: int = 2) -> torch.Tensor:
    """(N, 3*s*s, h, width), the plain sub-pixel layout, from a `_paired_conv` output (N, 6*s*s, h,
    width // 2 + 1); with `pairs` 1, `y` as it is. One copy: columns interleaved, extras dropped."""
    if pairs == 1:
        return y
    n, _, h, j = y.shape
    return _by_pair(y, scale).permute(0, 1, 2, 4, 5, 6, 3).reshape(n, -1, h, 2 * j)[..., 1:width + 1]


def shuffle_into(dst: torch.Tensor, y: torch.Tensor, scale: int) -> None:
    """Pixel-shuffle a sub-pixel output `y` (N, c*s*s, h, w) into `dst` (N, c, h*s, w*s), in one pass."""
    n, c, hs, ws = dst.shape
    s = scale
    dst.unflatten(3, (ws // s, s)).unflatten(2, (hs // s, s)).copy_(y.unflatten(1, (c, s, s)).permute(0, 1, 4, 2, 5, 3))


def shuffle_pairs_into(dst: torch.Tensor, y: torch.Tensor, first: int, scale: int) -> None:
    """Pixel-shuffle columns first .. first+w-1 of a `_paired_conv` output `y` (N, 6*s*s, h, J) into
    `dst` (N, 3, h*s, w*s), in one pass: whole pairs as runs of 2*s pixels, a lone column at
    either end by itself."""
    s, w = scale, dst.shape[3] // scale
    pairs = _by_pair(y, s)  # column u sits at pair (u + 1) // 2, half (u + 1) % 2

    def lone(u: int, at: int) -> None:
        col = pairs[:, :, :, (u + 1) % 2, :, :, (u + 1) // 2]  # (N, colour, sub-row, sub-column, h)
        dst[..., at * s:(at + 1) * s].unflatten(2, (-1, s)).copy_(col.permute(0, 1, 4, 2, 3))

    at = 0
    if first % 2 == 0 and w:  # the second half of a pair
        lone(first, 0)
        at = 1
    m = (w - at) // 2
    if m:
        j0 = (first + at + 1) // 2
        src = pairs[..., j0:j0 + m].permute(0, 1, 5, 2, 6, 3, 4)  # (N, colour, h, sub-row, m, p, sub-column)
        dst[..., at * s:(at + 2 * m) * s].unflatten(3, (m, 2, s)).unflatten(2, (-1, s)).copy_(src)
    if at + 2 * m < w:
        lone(first + w - 1, w - 1)


__all__ = ["shuffle_into", "shuffle_pairs_into", "unpair_columns"]
