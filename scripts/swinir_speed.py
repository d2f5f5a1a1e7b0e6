#!/usr/bin/env python
"""Seconds per SwinIR-light training step on the CPU, one change at a time, side by side.

    nice -n 10 python scripts/swinir_speed.py --blocks 1 4 --batch 16 --patch 48 --scale 2 --threads 2 --rounds 5

One step = Adam, L1 loss, forward + backward + optimizer step on a fixed random batch
(`--batch` LR patches of `--patch`^2, x`--scale`), as `srkd train` runs it (bf16 rows: autocast
around the forward, loss and weights in fp32). Every variant gets one untimed warm-up step, then
the variants are timed in interleaved rounds (variant 1, 2, ..., 1, 2, ...), so load that comes
and goes hits all of them alike; the table gives the median wall time and the ratio to the first
row, and the median CPU time of this process per step (user + system, both threads), which
other processes on a loaded machine disturb less than the wall time.
The load average before and after is printed: compare ratios, not absolute times, on a loaded
machine.

Variants (`--variants`, comma-separated names; default: all but the compiled ones):
  before        the SwinIR code before issue 32 (kept below as `_legacy_*`): the bias and shift
                mask expanded per image and added, torch.roll + partition + reverse + roll
  bias-bcast    exact attention, the bias broadcast over images (same sums, no copy); still roll
  gather        + the shifted blocks' roll + partition as one index_select each way
  fused         + F.scaled_dot_product_attention with the bias (+ mask) as a float mask
  *-bf16        the same under bf16 autocast (before-bf16, gather-bf16, fused-bf16)
  compile-X     torch.compile of variant X (e.g. compile-fused); its first step (the compile)
                is reported separately as `first_s`
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srkd_cli.archs import build_model  # noqa: E402
from srkd_cli.archs.swinir import SwinTransformerBlock, WindowAttention, window_partition, window_reverse  # noqa: E402

DEFAULT_VARIANTS = ("before", "bias-bcast", "gather", "fused", "before-bf16", "gather-bf16", "fused-bf16")


# --- the code before issue 32, for the "before" and "bias-bcast" rows ---------------------------
def _legacy_attn_forward(self, x, mask, fused=False):
    b_, n, c = x.shape
    qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
    bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        bias = (bias.unsqueeze(0) + mask.to(bias.dtype).unsqueeze(1).unsqueeze(0)).expand(b_ // nw, -1, -1, -1, -1)
        bias = bias.reshape(b_, self.num_heads, n, n)
    attn = (q * self.scale) @ k.transpose(-2, -1) + bias
    out = attn.softmax(dim=-1) @ v
    return self.proj(out.transpose(1, 2).reshape(b_, n, c))


def _legacy_block_forward(self, x, size, win):
    h, w = size
    b, _, c = x.shape
    y = self.norm1(x).view(b, h, w, c)
    if self.shift:
        y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
    y = self.attn(window_partition(y, self.ws), win.mask if self.shift else None, win.fused)
    y = window_reverse(y, self.ws, h, w)
    if self.shift:
        y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
    x = x + y.reshape(b, h * w, c)
    return x + self.mlp(self.norm2(x))


def make_variant(name: str, blocks: int, scale: int):
    """(model, step_fn-ready dict) for a variant name."""
    compiled = name.startswith("compile-")
    base = name[len("compile-"):] if compiled else name
    bf16 = base.endswith("-bf16")
    kind = base[: -len("-bf16")] if bf16 else base
    if kind not in ("before", "bias-bcast", "gather", "fused"):
        raise SystemExit(f"unknown variant {name!r}")
    torch.manual_seed(0)
    model = build_model("swinir", scale, blocks=blocks, depth=6, embed_dim=60, num_heads=6, window_size=8, mlp_ratio=2.0)
    model.set_attention("fused" if kind == "fused" else "exact")
    for m in model.modules():
        if kind == "before" and isinstance(m, WindowAttention):
            m.forward = types.MethodType(_legacy_attn_forward, m)
        if kind in ("before", "bias-bcast") and isinstance(m, SwinTransformerBlock):
            m.forward = types.MethodType(_legacy_block_forward, m)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    net = torch.compile(model) if compiled else model
    return dict(name=name, model=model, net=net, opt=opt, bf16=bf16, times=[], cpu=[], first_s=None)


def step(v, lr_img, hr_img) -> float:
    t, c = time.perf_counter(), time.process_time()
    v["opt"].zero_grad(set_to_none=True)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if v["bf16"] else nullcontext()
    with amp:
        sr = v["net"](lr_img)
    loss = F.l1_loss(sr.float(), hr_img)
    loss.backward()
    v["opt"].step()
    v["cpu"].append(time.process_time() - c)
    return time.perf_counter() - t


def run(blocks: int, args) -> list:
    torch.manual_seed(1)
    lr_img = torch.rand(args.batch, 3, args.patch, args.patch)
    hr_img = torch.rand(args.batch, 3, args.patch * args.scale, args.patch * args.scale)
    variants = [make_variant(n, blocks, args.scale) for n in args.variants]
    for v in variants:  # warm-up (and for compile-*, the compile)
        v["first_s"] = step(v, lr_img, hr_img)
        v["cpu"].clear()
    for _ in range(args.rounds):
        for v in variants:
            v["times"].append(step(v, lr_img, hr_img))
    base = statistics.median(variants[0]["times"])
    base_cpu = statistics.median(variants[0]["cpu"])
    rows = []
    for v in variants:
        med = statistics.median(v["times"])
        rows.append(dict(blocks=blocks, variant=v["name"], median_s=med, min_s=min(v["times"]), max_s=max(v["times"]),
                         first_s=v["first_s"], ratio=med / base, cpu_s=statistics.median(v["cpu"]),
                         cpu_ratio=statistics.median(v["cpu"]) / base_cpu))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=48, help="LR patch side; a multiple of the window (8) keeps windows whole")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", type=lambda s: s.split(","), default=list(DEFAULT_VARIANTS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.patch}^2 LR, x{args.scale}, "
          f"{args.rounds} rounds; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows = []
    for blocks in args.blocks:
        rows += run(blocks, args)
        print(f"\n{blocks} RSTB(s)\n| variant | median s/step | min | max | first step s | x first row | CPU s/step | x first row (CPU) |"
              "\n|---|---|---|---|---|---|---|---|")
        for r in rows:
            if r["blocks"] == blocks:
                print(f"| {r['variant']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | "
                      f"{r['first_s']:.2f} | {r['ratio']:.2f} | {r['cpu_s']:.2f} | {r['cpu_ratio']:.2f} |", flush=True)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
