"""Exact pieces: a model run on parts of its input, each with the halo its receptive field needs."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from .shuffle import shuffle_into, shuffle_pairs_into

# Input pixels: measured best of 64/96/128/192/256 on a 2-core EPYC (docs/performance.md).
CPU_TILE = 128
# onnxruntime's pieces (height, width bounds; HaloTiles evens them out): small enough that two
# workers' activations stay in the caches, large enough that the halo adds ~14 % work, not more.
# Measured against whole strips and 128..256-pixel pieces in docs/performance.md.
ORT_CPU_TILE = (144, 176)


class HaloTiles(nn.Module):
    """Runs `inner` on pieces of the input, each with a `halo` of context, exactly; optionally in parallel.

    With `halo` = the model's receptive radius (`ArchSpec.receptive_radius`), every output pixel
    sees the same inputs as in one whole-image call, so the result is the same to float rounding;
    nothing is blended (unlike the Upscaler's tiles, which exist to bound memory). Pieces are
    `tile` = (height, width) input pixels, or one strip per worker. Two reasons to cut: cache locality (one 64-channel
    activation of a 512x512 image is 64 MB, streamed through DRAM by every op; a 128x128
    piece's activations stay in the caches), and `workers` > 1: pieces run concurrently, each
    on one thread, which on a 2-core CPU beats two threads sharing every op. Only for inner
    runners that release the GIL and are safe to call concurrently (onnxruntime sessions are).
    An inner runner with `subpixel_output` (an `ort.OnnxModel` of a graph stopped before its
    pixel shuffle) returns its (N, 3*s*s, h, w) result through `run_subpixel` (or, with
    `column_pairs` 2, its raw output through `run_raw`), and the pixel shuffle happens in the copy.
    """

    def __init__(self, inner, scale: int, halo: int, tile: Optional[Tuple[int, int]] = None, workers: int = 1):
        super().__init__()
        self.inner, self.scale, self.halo = inner, int(scale), int(halo)
        self.tile = None if tile is None else (int(tile[0]), int(tile[1]))
        self.workers = max(1, int(workers))
        self._pool = None

    def pieces(self, hh: int, ww: int) -> List[Tuple[int, int, int, int]]:
        """(y0, x0, y1, x1) of each piece; without a tile, one full-width strip per worker.

        `tile` is an upper bound: the image is cut into as few pieces as it allows, of equal
        size (to a pixel), so no thin remainder pays a whole halo for a few rows.
        """
        th, tw = self.tile or (-(-hh // self.workers), ww)
        th, tw = -(-hh // -(-hh // th)), -(-ww // -(-ww // tw))
        return [(y0, x0, min(y0 + th, hh), min(x0 + tw, ww)) for y0 in range(0, hh, th) for x0 in range(0, ww, tw)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        s, r = self.scale, self.halo
        pieces = self.pieces(hh, ww)
        if len(pieces) == 1:
            return self.inner(x)
        out = x.new_empty(n, c, hh * s, ww * s)
        subpixel = bool(getattr(self.inner, "subpixel_output", False))
        pairs = subpixel and getattr(self.inner, "column_pairs", 1) == 2
        # Grad and inference modes are per thread: workers take the caller's.
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def run(piece: Tuple[int, int, int, int]) -> None:
            y0, x0, y1, x1 = piece
            a, b = max(0, y0 - r), max(0, x0 - r)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                piece_in = x[:, :, a:min(hh, y1 + r), b:min(ww, x1 + r)]
                dst = out[:, :, y0 * s:y1 * s, x0 * s:x1 * s]
                if pairs:  # shuffle while copying into place: one pass over the output, not two
                    shuffle_pairs_into(dst, self.inner.run_raw(piece_in)[:, :, y0 - a:y1 - a], x0 - b, s)
                elif subpixel:
                    shuffle_into(dst, self.inner.run_subpixel(piece_in)[:, :, y0 - a:y1 - a, x0 - b:x1 - b], s)
                else:
                    y = self.inner(piece_in)
                    dst.copy_(y[:, :, (y0 - a) * s:(y1 - a) * s, (x0 - b) * s:(x1 - b) * s])

        if self.workers > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="srkd-tile")
            list(self._pool.map(run, pieces))
        else:
            for p in pieces:
                run(p)
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pool"] = None  # thread pools do not pickle (or deep-copy)
        return state


__all__ = ["CPU_TILE", "HaloTiles", "ORT_CPU_TILE"]
