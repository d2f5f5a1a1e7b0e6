#!/usr/bin/env python
"""Convert the official BSRN checkpoints into srkd's bundled safetensors (MIT licence, docs/zoo.md).

    python scripts/bundle_bsrn.py ../shared/teachers

Each `net_g_BSRN_x{2,3,4}.pth` is checked against the sha256 its zoo entry pins for the official
URL, loaded strictly, and written unchanged (float32, the `params` wrapper dropped) to
srkd_cli/weights/bsrn-x{s}.safetensors with the upstream source, sha256 and licence in its
metadata; the licence notice itself is srkd_cli/weights/LICENSE-BSRN. Prints each file's sha256
for weights.toml. The tensors are reproduced exactly; safetensors writes the metadata keys in no
fixed order, so a rebuilt file may hash differently from the committed one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srkd_cli.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from srkd_cli.zoo import get_zoo, sha256_file  # noqa: E402

UPSTREAM = "xiaom233/BSRN @ 2d63d52"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="holds the official net_g_BSRN_x{2,3,4}.pth")
    args = ap.parse_args()
    for scale in (2, 3, 4):
        src = args.folder / f"net_g_BSRN_x{scale}.pth"
        (url,) = [s for s in get_zoo().get(f"bsrn-x{scale}").sources if s.kind == "url"]
        got = sha256_file(src)
        if got != url.sha256:
            sys.exit(f"{src}: sha256 {got}, but the official file is {url.sha256}")
        lm = load_checkpoint(src, scale=scale)
        dest = ROOT / "srkd_cli" / "weights" / f"bsrn-x{scale}.safetensors"
        save_checkpoint(dest, lm.model, "bsrn", lm.config, provenance={
            "source": url.url, "source_sha256": got, "upstream": UPSTREAM,
            "license": "MIT, Copyright (c) 2022 Hoven Li (srkd_cli/weights/LICENSE-BSRN)",
            "converted": "official float32 tensors, unchanged; the BasicSR 'params' wrapper dropped",
        })
        dest.chmod(0o644)  # package data, readable like the other bundled files
        print(f"bsrn-x{scale}: {dest.relative_to(ROOT)} sha256 {sha256_file(dest)}")


if __name__ == "__main__":
    main()
