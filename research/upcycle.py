#!/usr/bin/env python
"""Data upcycling (DUKD-style zoom-in): a teacher's upscale of each training image's centre, as new HR images.

    python research/upcycle.py --teacher bsrn-x2 --data ../shared/data/train --out runs/up/bsrn-x2

What the images are: srkd_cli/training/upcycle.py. Images already written are kept (rerun to
resume); `provenance.json` in --out records the teacher, its sha256 and this command. Give the
folder to a run as a second `--data` (research/ablation.sh arms rep-up, rep-bsrn-o-up).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srkd_cli.loader import load_model  # noqa: E402
from srkd_cli.training.upcycle import upcycle_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="zoo name or weights file (its scale is the zoom)")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--rim", type=int, default=12, help="pixels of context around the centre (cut off again)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--part", default="0/1", help="K/N: this process does every N-th image from the K-th")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    k, n = (int(v) for v in a.part.split("/"))
    lm = load_model(a.teacher, offline=True)
    prov = {"teacher": a.teacher, "teacher_sha256": lm.sha256, "command": " ".join(sys.argv)}
    made = upcycle_folder(lm.model, lm.scale, a.data, a.out, a.rim, (k, n), prov, log=lambda s: print(s, flush=True))
    print(f"{made} images written to {a.out}")


if __name__ == "__main__":
    main()
