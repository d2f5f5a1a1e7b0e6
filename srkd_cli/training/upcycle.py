"""Data upcycling (DUKD-style zoom-in): new HR training images made by a teacher from the old ones.

For every training image (H x W) the teacher upscales its centre (H/s) x (W/s) window, seen with
a rim of context that is cut off again, so the new image is about H x W: the same area as its
source, and a run given both folders draws from each about equally often. On the new images the
student learns the teacher's answer for the training content one zoom level closer; their LR is
made by the trainer's MATLAB bicubic like every other patch, so inputs keep the benchmark's
degradation. The folder is a plain `--data` folder for `srkd train` or `srkd distill`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_write
from ..imaging.io import list_images, unit_samples
from ..metrics import to_uint8
from .data import read_rgb_uint8

Window = Tuple[int, int, int, int]  # top, left, height, width
PROVENANCE = "provenance.json"


def centre_window(h: int, w: int, scale: int, rim: int) -> Tuple[Window, Window]:
    """The window the teacher sees (the centre (h/s, w/s) plus `rim` pixels, clamped to the image)
    and, inside it, the centre itself."""
    ch, cw = h // scale, w // scale
    top, left = (h - ch) // 2, (w - cw) // 2
    t0, l0 = max(0, top - rim), max(0, left - rim)
    t1, l1 = min(h, top + ch + rim), min(w, left + cw + rim)
    return (t0, l0, t1 - t0, l1 - l0), (top - t0, left - l0, ch, cw)


@torch.no_grad()
def upcycle_image(model: torch.nn.Module, img: np.ndarray, scale: int, rim: int) -> np.ndarray:
    """HxWx3 uint8 -> the model's x`scale` upscale of its centre window, uint8 (about HxW)."""
    (t, l, h, w), (y, x, ch, cw) = centre_window(img.shape[0], img.shape[1], scale, rim)
    sr = model(unit_samples(img[t : t + h, l : l + w]))
    return to_uint8(sr[0, :, y * scale : (y + ch) * scale, x * scale : (x + cw) * scale])


def upcycle_folder(model: torch.nn.Module, scale: int, src: Path, dest: Path, rim: int = 12,
                   part: Tuple[int, int] = (0, 1), provenance: Optional[dict] = None,
                   log: Callable[[str], None] = lambda line: None) -> int:
    """Write `dest/<relative path>.png` for every image under `src` (every `part[1]`-th from the
    `part[0]`-th); images already written are kept, so an interrupted run resumes. Returns how many
    were made. `provenance` (teacher, its sha256, command) is written beside them as JSON."""
    k, n = part
    start, made = time.time(), 0
    model = model.eval()
    for i, f in enumerate(list_images(src, recursive=True)):
        out = (dest / f.relative_to(src)).with_suffix(".png")
        if i % n != k or out.is_file():
            continue
        arr = upcycle_image(model, read_rgb_uint8(f), scale, rim)
        atomic_write(out, lambda tmp, arr=arr: Image.fromarray(arr).save(tmp, format="PNG"))
        made += 1
        log(f"{out} {arr.shape[1]}x{arr.shape[0]} ({time.time() - start:.0f} s)")
    record = {**(provenance or {}), "source": str(src), "scale": scale, "rim": rim,
              "window": "centre (H/s) x (W/s), teacher output kept"}
    atomic_write(dest / PROVENANCE, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
    return made


__all__ = ["centre_window", "upcycle_image", "upcycle_folder"]
