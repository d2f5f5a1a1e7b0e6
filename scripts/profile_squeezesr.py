#!/usr/bin/env python
"""Where SqueezeSR's CPU time goes: per-op time of one forward, eager PyTorch and onnxruntime.

    python scripts/profile_squeezesr.py --size 512x512 --scale 2 --threads 2 [--tune-malloc]

Prints, for the plain eager model (inference_mode), the re-parameterised channels_last model and
the split-stream ONNX graph run by onnxruntime (whole image on all threads, and one piece on one
thread, as `--backend onnxruntime` runs it): the time per op and each op kind's share.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srkd_cli.archs import build_model  # noqa: E402
from srkd_cli.archs.squeezesr_fused import Subpixel, receptive_radius, reparameterize, split_stream  # noqa: E402
from srkd_cli.bench import parse_size  # noqa: E402
from srkd_cli.runtime.allocator import tune_cpu_allocator  # noqa: E402
from srkd_cli.runtime.tiles import ORT_CPU_TILE, HaloTiles  # noqa: E402


def torch_profile(model, x, runs: int):
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(runs):
                model(x)
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key.startswith("aten::") and e.self_cpu_time_total > 0 and e.key not in (
                "aten::convolution", "aten::_convolution", "aten::conv2d", "aten::empty", "aten::resize_"):
            rows.append((e.key.replace("aten::", ""), str(e.input_shapes)[:60], e.self_cpu_time_total / runs / 1e3, e.count // runs))
    return rows


def ort_profile(model, x, threads: int, runs: int):
    import onnxruntime as ort

    from srkd_cli.runtime.graph import onnx_bytes

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="srkd-prof-"), "ort")
    sess = ort.InferenceSession(onnx_bytes(model), so, providers=["CPUExecutionProvider"])
    arr = x.numpy()
    for _ in range(2 + runs):
        sess.run(None, {"lr": arr})
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    Path(path).unlink()
    per = collections.defaultdict(float)
    count = collections.Counter()
    node_runs = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node_runs[e["name"]] += 1
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            if node_runs[e["name"]] > runs and count[e["name"]] < node_runs[e["name"]] - runs:
                count[e["name"]] += 1  # skip the warm-up runs
                continue
            per[(e["args"].get("op_name"), e["name"].replace("_kernel_time", ""))] += e["dur"]
    return [(op, name[:60], us / runs / 1e3, 1) for (op, name), us in per.items()]


def show(title: str, rows) -> None:
    total = sum(r[2] for r in rows)
    print(f"\n{title}: {total:.1f} ms per forward (sum of op times)")
    kinds = collections.defaultdict(float)
    for op, _, ms, _ in rows:
        kinds[op] += ms
    print("by op: " + ", ".join(f"{op} {ms:.0f} ms ({100 * ms / total:.0f}%)" for op, ms in sorted(kinds.items(), key=lambda kv: -kv[1])))
    print(f"{'op':24s} {'inputs / node':60s} {'ms':>8s} {'share':>6s} {'calls':>5s}")
    for op, what, ms, n in sorted(rows, key=lambda r: -r[2])[:16]:
        print(f"{op:24s} {what:60s} {ms:8.1f} {100 * ms / total:5.1f}% {n:5d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="512x512")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tune-malloc", action="store_true")
    args = ap.parse_args()
    if args.tune_malloc:
        tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    w, h = parse_size(args.size)
    torch.manual_seed(0)
    model = build_model("squeezesr", args.scale).eval()
    x = torch.rand(1, 3, h, w)
    malloc = "tuned" if args.tune_malloc else "default"
    show(f"eager, plain (NCHW), malloc {malloc}", torch_profile(model, x, args.runs))
    show(f"eager, fused channels_last, malloc {malloc}", torch_profile(reparameterize(model, channels_last=True), x, args.runs))
    try:
        show("onnxruntime, split graph, whole image", ort_profile(split_stream(model), x, args.threads, args.runs))
        r = receptive_radius(model)
        y0, x0, y1, x1 = HaloTiles(None, args.scale, r, ORT_CPU_TILE, workers=args.threads).pieces(h, w)[0]
        ph, pw = min(h, y1 - y0 + 2 * r), min(w, x1 - x0 + 2 * r)
        show(f"onnxruntime, one {y1 - y0}x{x1 - x0} piece with its halo ({ph}x{pw}), 1 thread, as --backend onnxruntime",
             ort_profile(Subpixel(split_stream(model, pair_columns=None)), x[:, :, :ph, :pw].contiguous(), 1, 10 * args.runs))
    except ImportError:
        print("\n(onnxruntime not installed: pip install onnx onnxruntime)")


if __name__ == "__main__":
    main()
