#!/usr/bin/env python
"""A visual comparison like paper 1's Figure 2: one crop upscaled by several models, beside HR.

    python scripts/compare_crops.py --data tests/data/Set5 --image butterfly --scale 2 \
        --crop 100,60,96,96 -m bicubic -m squeezesr-x2 -o docs/img/compare_butterfly_x2.png

Each panel is the crop (x,y,w,h in HR pixels) of the model's output for the benchmark LR
image, enlarged with nearest-neighbour so pixels stay visible, labelled with the model's
name and its PSNR-Y on the whole image (the evaluation protocol of srkd eval).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srkd_cli.evaluate import bicubic_upscaler, load_pairs, score, to_tensor  # noqa: E402
from srkd_cli.inference import Upscaler  # noqa: E402
from srkd_cli.loader import load_model  # noqa: E402
from srkd_cli.metrics import to_uint8  # noqa: E402

LABEL_H = 22


def upscale_fn(name: str, scale: int):
    if name == "bicubic":
        return bicubic_upscaler(scale)
    lm = load_model(name, None, scale)  # a weights file or a zoo name: load_model tells which
    return Upscaler(lm.model, lm.spec, lm.config, "cpu", tile=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--image", required=True, help="HR stem, e.g. butterfly")
    ap.add_argument("--scale", type=int, required=True)
    ap.add_argument("--crop", required=True, help="x,y,w,h in HR pixels")
    ap.add_argument("-m", "--model", action="append", required=True, help="bicubic, a zoo name or a weights file")
    ap.add_argument("--zoom", type=int, default=3)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()

    pair = next((p for p in load_pairs(args.data, args.scale) if p.stem == args.image), None)
    if pair is None:
        sys.exit(f"{args.data}: no image {args.image}")
    x, y, w, h = (int(v) for v in args.crop.split(","))
    hr = pair.hr if pair.hr.ndim == 3 else np.repeat(pair.hr[..., None], 3, 2)
    panels = []
    for name in args.model:
        sr = to_uint8(upscale_fn(name, args.scale)(to_tensor(pair.lr)))
        sr = np.repeat(sr, 3, 2) if sr.shape[2] == 1 else sr
        panels.append((f"{Path(name).stem} {score(sr, hr, args.scale)['psnr_y']:.2f} dB", sr))
    panels.append(("HR", hr))
    pw, ph = w * args.zoom, h * args.zoom
    sheet = Image.new("RGB", (pw * len(panels), ph + LABEL_H), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, img) in enumerate(panels):
        crop = Image.fromarray(np.ascontiguousarray(img[y:y + h, x:x + w])).resize((pw, ph), Image.NEAREST)
        sheet.paste(crop, (i * pw, LABEL_H))
        draw.text((i * pw + 4, 4), label, fill="black")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
