#!/usr/bin/env python
"""Quality vs speed: a PNG from `srkd bench --json` records, drawn with Pillow (no matplotlib).

    srkd bench -m squeezesr -m swinir4 --size 256x256 --scale 2 --json bench.json
    python scripts/plot_performance.py bench.json -o docs/img/quality_vs_speed_x2.png

x: median seconds per image (log scale); y: Set5 PSNR-Y (dB).
- Bicubic rows: PSNR measured here, on the Set5 copy in tests/data (MATLAB LR files, the
  SPEC §3 protocol), for each implementation (they differ by tenths of a dB).
- Model rows: the `metrics.set5_psnr_y` of the model's weights.toml entry (its `source`
  says who measured it); a row whose timing used untrained weights still gets its entry's
  quality, since speed does not depend on weight values. Rows without metrics are listed
  on stderr and left out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

W, H = 960, 600
MARGIN = dict(left=90, right=30, top=60, bottom=70)
COLOURS = {"bicubic": (120, 120, 120), "swinir": (31, 119, 180), "squeezesr": (214, 39, 40), "edsr-t": (44, 160, 44)}


def bicubic_psnr(dataset: Path, scale: int) -> dict:
    """Set5 PSNR-Y of each bicubic implementation bench times, on the MATLAB LR files."""
    import cv2
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from srkd_cli.evaluate import load_pairs, score, to_tensor
    from srkd_cli.imaging.imresize import imresize
    from srkd_cli.metrics import to_uint8

    def rgb(a):
        return a if a.ndim == 3 else np.repeat(a[..., None], 3, 2)

    impls = {
        "bicubic-matlab": lambda lr: to_uint8(imresize(to_tensor(rgb(lr)), scale=scale)),
        "bicubic-torch": lambda lr: to_uint8(F.interpolate(to_tensor(rgb(lr)), scale_factor=scale, mode="bicubic",
                                                           align_corners=False)),
        "bicubic-opencv": lambda lr: cv2.resize(rgb(lr), (lr.shape[1] * scale, lr.shape[0] * scale),
                                                interpolation=cv2.INTER_CUBIC),
        "bicubic-pillow": lambda lr: np.array(Image.fromarray(rgb(lr)).resize((lr.shape[1] * scale, lr.shape[0] * scale),
                                                                              Image.BICUBIC)),
    }
    pairs = load_pairs(dataset, scale)
    with torch.no_grad():
        return {name: sum(score(f(p.lr), rgb(p.hr), scale)["psnr_y"] for p in pairs) / len(pairs)
                for name, f in impls.items()}


def zoo_quality(name: str):
    from srkd_cli.zoo import get_zoo

    base = name.replace(" (untrained)", "")
    entry = get_zoo().entries.get(base)
    if entry is None or "set5_psnr_y" not in entry.metrics:
        return None
    m = entry.metrics
    source = m.get("source") or ("srkd eval" if "command" in m else "weights.toml")
    return float(m["set5_psnr_y"]), str(source)


def family(name: str) -> str:
    if name.startswith("bicubic"):
        return "bicubic"
    for fam in ("swinir", "squeezesr", "edsr-t"):
        if name.startswith(fam):
            return fam
    return "other"


def nice_log_ticks(lo: float, hi: float):
    ticks = []
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def fmt_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    return f"{s * 1e3:.3g} ms"


def draw(points, title: str, subtitle: str, out: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=14)
    small = ImageFont.load_default(size=12)
    big = ImageFont.load_default(size=18)
    x0, x1 = MARGIN["left"], W - MARGIN["right"]
    y0, y1 = MARGIN["top"], H - MARGIN["bottom"]
    ts = [p["t"] for p in points]
    qs = [p["q"] for p in points]
    lt_lo, lt_hi = math.log10(min(ts)) - 0.3, math.log10(max(ts)) + 0.3
    q_lo, q_hi = math.floor(min(qs) - 0.5), math.ceil(max(qs) + 0.5)

    def px(t, q):
        x = x0 + (math.log10(t) - lt_lo) / (lt_hi - lt_lo) * (x1 - x0)
        y = y1 - (q - q_lo) / (q_hi - q_lo) * (y1 - y0)
        return x, y

    d.rectangle([x0, y0, x1, y1], outline="black")
    for t in nice_log_ticks(10 ** lt_lo, 10 ** lt_hi):
        x, _ = px(t, q_lo)
        d.line([x, y0, x, y1], fill=(230, 230, 230))
        d.text((x, y1 + 6), fmt_seconds(t), fill="black", font=small, anchor="mt")
    for q in range(q_lo, q_hi + 1):
        _, y = px(10 ** lt_lo, q)
        d.line([x0, y, x1, y], fill=(230, 230, 230))
        d.text((x0 - 8, y), f"{q}", fill="black", font=small, anchor="rm")
    d.rectangle([x0, y0, x1, y1], outline="black")
    d.text(((x0 + x1) / 2, H - 22), "median time per image (log scale)", fill="black", font=font, anchor="mm")
    ylabel = Image.new("RGB", (220, 24), "white")
    ImageDraw.Draw(ylabel).text((110, 12), "Set5 PSNR-Y (dB)", fill="black", font=font, anchor="mm")
    img.paste(ylabel.rotate(90, expand=True), (14, int((y0 + y1) / 2 - 110)))
    d.text((x0, 14), title, fill="black", font=big)
    d.text((x0, 38), subtitle, fill=(90, 90, 90), font=small)
    boxes = []  # label boxes already drawn, so later labels go where they do not collide

    def free(box):
        return all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in boxes)

    for p in sorted(points, key=lambda p: p["t"]):
        x, y = px(p["t"], p["q"])
        colour = COLOURS.get(family(p["name"]), (148, 103, 189))
        d.ellipse([x - 6, y - 6, x + 6, y + 6], fill=colour, outline="black")
        boxes.append((x - 6, y - 6, x + 6, y + 6))
    for p in sorted(points, key=lambda p: p["t"]):
        x, y = px(p["t"], p["q"])
        colour = COLOURS.get(family(p["name"]), (148, 103, 189))
        tw = d.textlength(p["label"], font=small)
        candidates = []
        for dy in (-14, 14, -28, 28, -42, 42, 0):
            candidates += [(x + 10, y + dy - 7), (x - 10 - tw, y + dy - 7)]
        for lx, ly in candidates:
            box = (lx, ly, lx + tw, ly + 14)
            if box[0] > x0 and box[2] < x1 and box[1] > y0 and box[3] < y1 and free(box):
                break
        boxes.append(box)
        d.text((lx, ly), p["label"], fill=colour, font=small)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description="quality vs speed PNG from `srkd bench --json` records")
    ap.add_argument("bench_json", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, default=ROOT / "tests" / "data" / "Set5")
    args = ap.parse_args()
    records = json.loads(args.bench_json.read_text())
    if not records:
        sys.exit(f"{args.bench_json}: no records")
    scale, size, device = records[0]["scale"], records[0]["size"], records[0]["device"]
    bic = bicubic_psnr(args.dataset, scale)
    points, missing = [], []
    for r in records:
        if r["model"] in bic:
            q, src = bic[r["model"]], "measured"
        else:
            found = zoo_quality(r["model"])
            if found is None:
                missing.append(r["model"])
                continue
            q, src = found
        label = f"{r['model'].replace(' (untrained)', '')} ({r['backend']}): {q:.2f} dB, {fmt_seconds(r['median_s'])}"
        points.append({"name": r["model"], "t": r["median_s"], "q": q, "label": label, "source": src})
    for m in sorted(set(missing)):
        print(f"no quality number for {m} (no metrics.set5_psnr_y in weights.toml): left out", file=sys.stderr)
    if not points:
        sys.exit("nothing to plot")
    sources = sorted({p["source"] for p in points if p["source"] != "measured"})
    subtitle = (f"x{scale}, input {size}, {device}; bicubic PSNR measured on tests/data/Set5; "
                f"model PSNR from weights.toml ({'; '.join(sources) or 'none'})")
    draw(points, f"Quality vs speed, x{scale}", subtitle, args.out)
    for p in points:
        print(f"{p['name']:32s} {p['t'] * 1e3:10.2f} ms {p['q']:7.2f} dB  ({p['source']})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
