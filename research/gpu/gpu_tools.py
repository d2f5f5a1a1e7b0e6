"""The commands of `research/gpu/gpu_run.py` that train nothing and need no GPU: --evaluate (score a
run's models on more sets, here) and --carry-check (what a session resuming a run carries); and
`score`, the evaluation a run and --evaluate share.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import gpu_plan as gp
import gpu_state as gs
from gpu_args import ROOT, Fail, read_summary


def score(weights: Path, folders: Sequence[Path], device: Any, cache: Dict[Any, Any]) -> Dict[str, Dict[str, Any]]:
    """The evaluation protocol's PSNR/SSIM (Y and RGB) of one weights file on each folder."""
    from srkd_cli.backends import build_upscaler
    from srkd_cli.checkpoint import load_checkpoint
    from srkd_cli.evaluate import evaluate_folder, load_pairs

    lm = load_checkpoint(weights, device=device)
    up, _ = build_upscaler(lm, "auto", "fp32", device)  # what `srkd eval` / `srkd upscale` run by default
    out = {}
    for folder in folders:
        key = (str(folder), lm.scale)
        if key not in cache:  # decoded (and, for an HR-only set, its LR made) once per set and scale
            cache[key] = load_pairs(folder, lm.scale)
        rec = evaluate_folder(up, weights.stem, folder, lm.scale, pairs=cache[key])
        out[folder.name] = {k: round(getattr(rec, k), 4) for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")}
        out[folder.name]["images"] = rec.n_images
    return out


def evaluate_run(args: argparse.Namespace) -> int:
    """--evaluate DIR: lay every finished model's weights out in DIR/models/ (from the pack its record names),
    then score them on the --val sets their records lack. summary.json is rewritten after each model,
    so an interrupted pass loses nothing and the next one goes on."""
    import zipfile

    import torch

    from srkd_cli.atomic import atomic_write
    from srkd_cli.inference import pick_device

    folder = args.evaluate
    path = folder / "summary.json"
    if not path.is_file():
        raise Fail(f"--evaluate {folder}: holds no summary.json (copy there the files a run returned)")
    summary = read_summary(path, "--evaluate")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cache: Dict[Any, Any] = {}
    for st in summary.get("stages", []):
        if st.get("status") not in ("done", "stopped"):
            continue
        weights = folder / "models" / f"{st['name']}.safetensors"
        found = gs.find_weights(folder, st["name"], st.get("returned_in"))
        if found is not None and found[1] is not None:
            with zipfile.ZipFile(found[0]) as z:
                data = z.read(found[1])
            atomic_write(weights, lambda tmp, d=data: tmp.write_bytes(d))
        elif found is not None and found[0] != weights:
            gs.copy_atomic(found[0], weights)
        if not weights.is_file():
            print(f"{st['name']}: no weights in {folder} (models-*.zip, *.safetensors): not scored", flush=True)
            continue
        missing = [v for v in args.val if v.name not in st.get("eval", {})]
        if not missing:
            continue
        t = time.monotonic()
        st.setdefault("eval", {}).update(score(weights, missing, device, cache))
        gs.write_json(path, summary)
        print(f"{st['name']}: " + ", ".join(f"{v.name} PSNR-Y {st['eval'][v.name]['psnr_y']:.3f}" for v in missing)
              + f" ({time.monotonic() - t:.0f} s on {device})", flush=True)
    print(f"weights: {folder / 'models'}", flush=True)
    print(gp.report(summary), end="", flush=True)
    return 0


CARRY_LIMIT = 64 * 2**20  # the device tool's working tree, carried paths included
SUMMARY_ROOM = 500_000  # bytes kept for summary.json growing over a session


def carry_check(folder: Path, data: Optional[List[Path]]) -> int:
    """--carry-check DIR: the bytes a session resuming from DIR carries against the device tool's 64 MiB,
    and the --pack-mb that leaves the session after it room to carry its pack."""
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                                check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError) as e:
        raise Fail(f"--carry-check: cannot list the repository's files with git ({e})") from None
    code = sum((ROOT / f).stat().st_size for f in listed if f and (ROOT / f).is_file())
    datas = data or [ROOT / "data" / "train"]
    for d in datas:
        if not d.is_dir():
            raise Fail(f"--carry-check: {d}: no such folder (the training data a session carries)")
    data_b = sum(f.stat().st_size for d in datas for f in d.rglob("*") if f.is_file())
    state = [folder / n for n in (gs.RESUME_PACK, "summary.json") if (folder / n).is_file()]
    state_b = sum(f.stat().st_size for f in state)
    total = code + data_b + state_b
    rel = [str(p.resolve().relative_to(ROOT)) if p.resolve().is_relative_to(ROOT) else str(p) for p in [*datas, *state]]
    print(f"code (git ls-files -co --exclude-standard): {code / 1e6:.2f} MB")
    print(f"data: {data_b / 1e6:.2f} MB ({', '.join(map(str, datas))})")
    print(f"state: {state_b / 1e6:.2f} MB ({', '.join(p.name for p in state) or 'none: a first session'})")
    print(f"total {total / 1e6:.2f} MB of {CARRY_LIMIT / 1e6:.2f} MB (64 MiB): {'fits' if total <= CARRY_LIMIT else 'DOES NOT FIT'}")
    print(f"carry={json.dumps(rel)}")
    room = (CARRY_LIMIT - code - data_b - SUMMARY_ROOM) / 1e6
    print(f"room for the next resume.zip: --pack-mb {max(0.0, room):.1f}")
    if total > CARRY_LIMIT:
        raise Fail(f"--carry-check {folder}: {total / 1e6:.2f} MB do not fit the 64 MiB a device call carries")
    return 0
