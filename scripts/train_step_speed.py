#!/usr/bin/env python
"""Seconds per training step on this machine: fp32 vs bf16 autocast, NCHW vs channels-last, plain vs --reparam.

    python scripts/train_step_speed.py --threads 2 --steps 8 --json speed.json [--arch edsr-t --arch repsr]

Each row is a real `srkd train` step (training.Trainer: the patch gather and MATLAB bicubic LR,
forward, L1, backward, clipping, Adam, EMA): batch 16, 48x48 LR patches (SwinIR: 64), x2, read
from --data. The rows are timed round-robin, one step of each per round, so a change in the
machine's load falls on every row alike; the table gives each row's median and its speed-up
over fp32/NCHW of the same model. Say what else ran on the machine when quoting it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srkd_cli.archs import ARCHS  # noqa: E402
from srkd_cli.runtime.cpu import cpu_bf16_units  # noqa: E402
from srkd_cli.training import TrainConfig  # noqa: E402
from srkd_cli.training.trainer import Trainer  # noqa: E402

# What srkd trains (students and teachers of its own); swinir at one RSTB, the students' size.
ARCH_SETS = {"edsr-t": {}, "squeezesr": {}, "repsr": {}, "swinir": {"blocks": 1}, "imdn": {}, "bsrn": {}, "carn-m": {}}


def make(arch: str, precision: str, channels_last: bool, reparam: int, data: Path, out: Path, batch: int) -> Trainer:
    cfg = TrainConfig(arch=arch, scale=2, data=[data], out=out, arch_config=dict(ARCH_SETS[arch]), steps=10**6,
                      batch=batch, precision=precision, reparam=reparam, quiet=True, ckpt_every=0, val_every=0)
    t = Trainer(cfg)
    t.channels_last = channels_last
    t.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", action="append", help=f"default: {', '.join(ARCH_SETS)}")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/train/t91")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per row (after 2 warm-up steps)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    archs = args.arch or list(ARCH_SETS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            variants = [(p, cl, r) for r in ((0, 64) if ARCHS[arch].expandable else (0,))
                        for p in ("fp32", "bf16") for cl in (False, True)]
            trainers = {v: make(arch, *v, args.data, Path(tmp) / f"{arch}-{i}", args.batch) for i, v in enumerate(variants)}
            times = {v: [] for v in variants}
            for i in range(2 + args.steps):
                for v, t in trainers.items():
                    t0 = time.perf_counter()
                    t._train_step()
                    t._flush_losses()  # the loss read back, as a logged step does: the step has finished
                    if i >= 2:
                        times[v].append(time.perf_counter() - t0)
            base = {r: statistics.median(times[("fp32", False, r)]) for r in {v[2] for v in variants}}
            for v in variants:
                med = statistics.median(times[v])
                rows.append({"arch": arch, "precision": v[0], "channels_last": v[1], "reparam": v[2],
                             "s_per_step": med, "steps_per_s": 1 / med, "speedup": base[v[2]] / med})
                print(f"{arch:10s} {'reparam ' + str(v[2]) if v[2] else 'plain':10s} {v[0]:5s} "
                      f"{'channels-last' if v[1] else 'NCHW':14s} {med:7.3f} s/step {1 / med:7.2f} steps/s "
                      f"x{base[v[2]] / med:.2f}", flush=True)
            del trainers
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "batch": args.batch, "bf16_units": cpu_bf16_units(),
                                               "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
