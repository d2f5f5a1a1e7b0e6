#!/usr/bin/env python
"""Data upcycling (DUKD-style zoom-in): a teacher's upscale of each training image's centre, as new HR images.

    python scripts/upcycle.py --teacher bsrn-x2 --data ../shared/data/train --out runs/up/bsrn-x2

For every image under --data (H x W), the centre (H/s) x (W/s) window plus a rim of --rim LR
pixels is upscaled by the teacher, the rim is cut off again, and the result (about H x W, the
same area as the image, so the two sets are drawn about equally often) is written as PNG under
--out with the same relative path. A training run given both folders (`--data A --data B`)
then learns, on B, the teacher's answer for the image's own pixels used as an LR input: the
student sees the training content one zoom level closer, labelled by the teacher. The LR of
those patches is made by the trainer's MATLAB bicubic as always, so inputs stay in the
benchmark's degradation. Images already written are kept (the script resumes); each file is
written atomically. A `provenance.json` in --out records the teacher, its sha256, and the
command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srkd_cli.atomic import atomic_write  # noqa: E402
from srkd_cli.imaging.io import list_images, read_uint8  # noqa: E402
from srkd_cli.loader import load_model  # noqa: E402
from srkd_cli.zoo import get_zoo  # noqa: E402
from srkd_cli.zoo.cache import sha256_file  # noqa: E402


def centre_window(h: int, w: int, scale: int, rim: int):
    """(top, left, height, width) of the centre (h/s, w/s) window and the rim kept around it,
    clamped to the image; the rim is cut from the teacher's output again."""
    ch, cw = h // scale, w // scale
    top, left = (h - ch) // 2, (w - cw) // 2
    t0, l0 = max(0, top - rim), max(0, left - rim)
    t1, l1 = min(h, top + ch + rim), min(w, left + cw + rim)
    return (t0, l0, t1 - t0, l1 - l0), (top - t0, left - l0, ch, cw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="zoo name or weights file (its scale is the zoom)")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--rim", type=int, default=12, help="LR pixels of context around the centre (cut off again)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--part", default="0/1", help="K/N: this process does every N-th image from the K-th")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    k, n = (int(v) for v in a.part.split("/"))
    lm = load_model(a.teacher, offline=True)
    weights = Path(a.teacher) if Path(a.teacher).is_file() else get_zoo().resolve(a.teacher, offline=True)
    model, s = lm.model.eval(), lm.model.scale
    files = list_images(a.data, recursive=True)
    a.out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    start, made = time.time(), 0
    for i, f in enumerate(files):
        if i % n != k:
            continue
        dest = (a.out / f.relative_to(a.data)).with_suffix(".png")
        if dest.is_file():
            continue
        img = read_uint8(f)
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
        (t, l, h, w), (y, x, ch, cw) = centre_window(img.shape[0], img.shape[1], s, a.rim)
        crop = torch.from_numpy(np.ascontiguousarray(img[t : t + h, l : l + w])).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            sr = model(crop).clamp(0, 1)
        sr = sr[0, :, y * s : (y + ch) * s, x * s : (x + cw) * s]
        arr = (sr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, lambda tmp, arr=arr: Image.fromarray(arr).save(tmp, format="PNG"))
        made += 1
        print(f"{dest} {arr.shape[1]}x{arr.shape[0]} ({time.time() - start:.0f} s)", flush=True)
    prov = {"teacher": a.teacher, "teacher_sha256": sha256_file(weights),
            "data": str(a.data), "scale": s, "rim": a.rim, "window": "centre (H/s) x (W/s)",
            "command": " ".join(sys.argv)}
    atomic_write(a.out / "provenance.json", lambda tmp: Path(tmp).write_text(json.dumps(prov, indent=1) + "\n"))
    print(f"{made} images written to {a.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
