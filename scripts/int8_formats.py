#!/usr/bin/env python
"""QDQ against QOperator int8 graphs of one SqueezeSR model, timed side by side with fp32.

    python scripts/int8_formats.py -m squeezesr-x2 --size 512 --rounds 11 --threads 2

Both int8 graphs come from the same recipe (`srkd_cli/quantize.py`: fused, stream equalised,
Percentile calibration, per-channel weights, the weight bits this CPU wants); only the format
differs. Each round times fp32 (`--backend onnxruntime`), int8 QDQ and int8 QOperator once, in
that order, each in the cache-sized pieces srkd runs (`HaloTiles`), so a machine's load changes
all three alike; medians are reported with the ratio to fp32, and each graph's mean |difference|
from fp32 PyTorch in grey levels on the timed image. Prints one JSON line per graph.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srkd_cli.archs import halo_radius  # noqa: E402
from srkd_cli.backends import prepare  # noqa: E402
from srkd_cli.loader import load_model  # noqa: E402
from srkd_cli.quantize import (calibration_crops, calibration_files, int8_difference, quantize_bytes,  # noqa: E402
                               u8s8_saturates, weight_bits)
from srkd_cli.runtime.ort import OnnxModel  # noqa: E402
from srkd_cli.runtime.tiles import ORT_CPU_TILE, HaloTiles  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="squeezesr-x2")
    ap.add_argument("--size", type=int, default=512, help="square LR input side")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu").model.eval()
    bits = weight_bits()
    crops = calibration_crops(calibration_files()[1], model.scale)
    torch.manual_seed(0)
    x = torch.rand(1, 3, args.size, args.size)

    def int8(fmt: str):
        inner = OnnxModel(quantize_bytes(model, crops, bits=bits, fmt=fmt), threads=1)
        if args.threads > 1:
            return HaloTiles(inner, model.scale, halo_radius(model), ORT_CPU_TILE, workers=args.threads)
        return inner

    runners = {"fp32": prepare(model, "onnxruntime", "cpu", threads=args.threads),
               "int8-qdq": int8("qdq"), "int8-qoperator": int8("qoperator")}
    times = {k: [] for k in runners}
    with torch.inference_mode():
        for r in runners.values():
            r(x)  # warm-up: sessions allocate on the first call
        for _ in range(args.rounds):
            for k, r in runners.items():
                t0 = time.perf_counter()
                r(x)
                times[k].append(time.perf_counter() - t0)
        natural = [torch.from_numpy(c) for c in calibration_crops(calibration_files()[1], model.scale, n=4, seed=1)]
        diffs = {k: int8_difference(model, r, natural) for k, r in runners.items()}
    base = statistics.median(times["fp32"])
    for k, ts in times.items():
        med = statistics.median(ts)
        print(json.dumps({"graph": k, "model": args.model, "size": args.size, "threads": args.threads,
                          "weight_bits": bits, "saturating_kernels": u8s8_saturates(), "median_ms": round(med * 1e3, 2),
                          "speedup_vs_fp32": round(base / med, 3), "mean_grey_diff": round(diffs[k], 3)}))


if __name__ == "__main__":
    main()
