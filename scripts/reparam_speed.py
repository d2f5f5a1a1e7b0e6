#!/usr/bin/env python
"""Training steps/s of SqueezeSR: plain, `--reparam W` collapsed every step, and the same expanded
model running its branches one by one. Side by side in one run, rounds interleaved, medians.

    python scripts/reparam_speed.py --scale 2 --width 64 --batch 16 --patch 48 --threads 1 --rounds 7 --steps 10

A step is what the trainer does: forward, L1 loss, backward, clipping, Adam.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srkd_cli.archs import build_model, count_params, reparam  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    plain = build_model("squeezesr", a.scale)
    expanded = reparam.expand(build_model("squeezesr", a.scale), a.width)
    forms = {"plain": (plain, False), f"reparam {a.width}, collapsed every step": (expanded, False),
             f"reparam {a.width}, branches run separately": (expanded, True)}
    lr = torch.rand(a.batch, 3, a.patch, a.patch)
    hr = torch.rand(a.batch, 3, a.patch * a.scale, a.patch * a.scale)
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, (m, _) in forms.items()}

    def steps(name: str, n: int) -> float:
        model, separate = forms[name]
        ctx = reparam.branches_run_separately(model) if separate else nullcontext()
        t0 = time.perf_counter()
        with ctx:
            for _ in range(n):
                loss = F.l1_loss(model(lr), hr)
                opts[name].zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opts[name].step()
        return n / (time.perf_counter() - t0)

    for name in forms:
        steps(name, 2)  # warm-up: oneDNN primitives, allocator
    rates = {name: [] for name in forms}
    for _ in range(a.rounds):
        for name in forms:
            rates[name].append(steps(name, a.steps))
    base = statistics.median(rates["plain"])
    print(f"x{a.scale}, batch {a.batch}, LR patch {a.patch}, {a.threads} thread(s), {a.rounds} rounds of {a.steps} steps")
    print(f"{'form':<42} {'trained params':>14} {'steps/s':>8} {'vs plain':>8}")
    for name, (model, _) in forms.items():
        med = statistics.median(rates[name])
        print(f"{name:<42} {count_params(model):>14,} {med:>8.2f} {med / base:>8.2f}")


if __name__ == "__main__":
    main()
