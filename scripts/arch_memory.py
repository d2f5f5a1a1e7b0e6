"""Peak memory per input pixel of one forward pass, for `ArchSpec.bytes_per_pixel`.

    python scripts/arch_memory.py esrgan:blocks=23 compact:convs=32 --scale 4 --size 128

Each measurement runs in a fresh process (ru_maxrss is a high-water mark that never falls): the
model is built and run once on a 16x16 input (weights, thread pools and oneDNN's caches are then
in place), the peak RSS is read, the model runs on one size x size input under no_grad, and the
rise of the peak RSS, divided by size^2, is the figure (it includes the output; float32, one
thread, glibc tuned as `srkd upscale` tunes it). tracemalloc cannot see torch's allocations;
RSS can, at page granularity, which at 128^2+ pixels is far below 1 %.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def measure(arch: str, cfg: dict, scale: int, size: int) -> float:
    import resource

    import torch

    from srkd_cli.archs import build_model
    from srkd_cli.runtime.allocator import tune_cpu_allocator

    torch.set_num_threads(1)
    tune_cpu_allocator()
    model = build_model(arch, scale, **cfg).eval()
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        model(torch.rand(1, 3, 16, 16))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        y = model(x)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del y
    return (after - before) * 1024 / (size * size)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="ARCH[:KEY=VALUE,...]")
    ap.add_argument("--scale", type=int, action="append")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        arch, cfg, scale = json.loads(a.child)
        print(measure(arch, cfg, scale, a.size))
        return
    from srkd_cli.archs import get_arch
    from srkd_cli.config import parse_setting

    for text in a.models:
        arch, _, rest = text.partition(":")
        cfg = dict(parse_setting(kv) for kv in rest.split(",") if kv)
        for scale in a.scale or [4]:
            if arch == "esrgan" and scale == 2 and "unshuffle" not in cfg:
                cfg = {**cfg, "unshuffle": 2}  # Real-ESRGAN's x2
            out = subprocess.run([sys.executable, __file__, "x", "--size", str(a.size), "--child",
                                  json.dumps([arch, cfg, scale])], capture_output=True, text=True, check=True)
            got = float(out.stdout.strip())
            spec = get_arch(arch)
            est = spec.bytes_per_pixel(spec.config(**cfg), scale)
            print(f"{arch} {cfg} x{scale} {a.size}^2: measured {got / 1000:.1f}k B/px, estimate {est / 1000:.1f}k", flush=True)


if __name__ == "__main__":
    main()
