#!/usr/bin/env python
"""Ship a trained model inside the package: copy its weights and print its weights.toml entry.

    python scripts/bundle_model.py runs/squeezesr-x2/best.safetensors squeezesr-x2 \
        --data tests/data/Set5 --data ../shared/data/benchmark/Set14 [--half]

The weights go to srkd_cli/weights/NAME.safetensors (fp16 storage with --half; --weights-dir
elsewhere); the entry printed carries the parameter count, sha256, the provenance stored in the
file, and the PSNR-Y measured here with the evaluation protocol (the same code as `srkd eval`),
together with the `srkd eval` command that reproduces it.

NAME must say what the weights are (srkd_cli/zoo/naming.py): it ends in -x{scale}, never takes
a name the zoo gives to official weights, and a SwinIR trained by srkd is swinir4-srkd-x{s}
(teacher), swinir-s{k}-kd-x{s} (paper 2's students) or swinir-s{k}-x{s} (their no-KD twins),
never the official release's swinir4-x{s}. Bad input stops with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srkd_cli.archs import count_params  # noqa: E402
from srkd_cli.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from srkd_cli.evaluate import evaluate_folder  # noqa: E402
from srkd_cli.inference import Upscaler  # noqa: E402
from srkd_cli.errors import SrkdError  # noqa: E402
from srkd_cli.zoo import get_zoo, sha256_file  # noqa: E402
from srkd_cli.zoo.naming import check_bundle_name, describe  # noqa: E402


class Fail(Exception):
    """Bad input: one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        raise Fail(message)


def main(argv: Optional[List[str]] = None) -> int:
    try:
        bundle(argv)
        return 0
    except (Fail, SrkdError, OSError) as e:
        print(f"bundle_model.py: error: {e}", file=sys.stderr)
        return 2


def bundle(argv: Optional[List[str]]) -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", type=Path)
    ap.add_argument("name")
    ap.add_argument("--data", type=Path, action="append", required=True)
    ap.add_argument("--half", action="store_true", help="store the weights in float16")
    ap.add_argument("--description", default=None)
    ap.add_argument("--weights-dir", type=Path, default=ROOT / "srkd_cli" / "weights",
                    help="where the weights go (default srkd_cli/weights, the package's bundled files)")
    args = ap.parse_args(argv)
    for d in args.data:
        if not d.is_dir():
            raise Fail(f"--data {d}: no such folder")

    src = load_checkpoint(args.weights)
    prov = json.loads(src.metadata.get("provenance", "{}"))
    zoo = get_zoo()
    unbundled = [e.name for e in zoo.list() if not any(s.kind == "bundled" for s in e.sources)]
    check_bundle_name(args.name, src.spec.name, src.scale, src.config, prov, unbundled)
    dest = args.weights_dir / f"{args.name}.safetensors"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if args.half:
        save_checkpoint(dest, src.model, src.spec.name, src.config, provenance=prov, half=True)
    elif args.weights.resolve() != dest.resolve():
        shutil.copyfile(args.weights, dest)
    lm = load_checkpoint(dest)
    metrics = {}
    for folder in args.data:
        rec = evaluate_folder(Upscaler(lm.model, lm.spec, lm.config, "cpu", tile=None), args.name, folder, lm.scale)
        metrics[f"{folder.name.lower()}_psnr_y"] = round(rec.psnr_y, 3)
        metrics[f"{folder.name.lower()}_ssim_y"] = round(rec.ssim_y, 4)
    data = " ".join(f"--data {d}" for d in args.data)
    metrics["command"] = f"srkd eval --model {args.name} {data} --scale {lm.scale}"
    overrides = {k: v for k, v in lm.config.items() if lm.spec.defaults.get(k) != v}
    steps = prov.get("steps", "?")
    commands = prov.get("commands") or [prov.get("command", "?")]
    if prov.get("init"):
        start = prov["init"]
    elif prov.get("init_from_teacher"):
        start = "its teacher's weights (--init-from-teacher)"
    else:  # a run resumed on another machine names its start by sha256 alone
        start = "weights" if prov.get("init_sha256") else "scratch"
    if prov.get("init_sha256"):
        start += f" (sha256 {prov['init_sha256']})"
    trained = ([f"Trained by srkd: {commands[0]}"] if len(commands) == 1 else
               [f"Trained by srkd in {len(commands)} pieces, each resuming the one before with a longer schedule:",
                *commands])
    text = [
        f'[models."{args.name}"]',
        f'arch = "{lm.spec.name}"',
        f"scale = {lm.scale}",
        "config = {" + (" " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in overrides.items()) + " " if overrides else "") + "}",
        f"params = {count_params(lm.model)}",
        'license = "Apache-2.0"',
        f'description = {json.dumps(args.description or describe(args.name, lm.spec.name, lm.scale, lm.config, prov) or lm.spec.description)}',
        'provenance = """',
        *trained,
        f"Steps: {steps}; data fingerprint {prov.get('data_fingerprint', '?')}; seed {prov.get('seed', '?')};",
        f"best validation PSNR-Y {prov.get('best_val_psnr_y', '?')}; initialised from {start}.",
        *([f"Teacher: {prov['teacher']} (sha256 {prov.get('teacher_sha256', '?')}); recipe {prov.get('recipe')}, "
           + (f"alpha {prov.get('alpha')}" if prov.get("recipe") == "paper2-alpha-kd" else
              f"feature pairs {prov.get('pairs')}, {prov.get('feat_loss')} x {prov.get('feat_weight')}, "
              f"output weight {prov.get('out_weight')}")
           + f"; teacher cache {prov.get('teacher_cache')}."]
          if prov.get("teacher") else []),
        *([f"Trained re-parameterised (--reparam {prov['reparam']['width']}: {', '.join(prov['reparam']['branches'])}, "
           "collapsed every step); stored collapsed, the plain architecture."] if prov.get("reparam") else []),
        f"{'Stored in float16.' if args.half else 'Stored in float32.'}",
        '"""',
        "metrics = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in metrics.items()) + " }",
        "sources = [",
        f'  {{ kind = "bundled", file = "{dest.name}", sha256 = "{sha256_file(dest)}" }},',
        "]",
    ]
    # Paths as a reader of the repository sees them: ../shared beside it.
    print("\n".join(text).replace(str(ROOT.parent / "shared"), "../shared"))


if __name__ == "__main__":
    sys.exit(main())
