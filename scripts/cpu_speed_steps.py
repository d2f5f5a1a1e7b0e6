#!/usr/bin/env python
"""Measure SqueezeSR's CPU speed-ups one step at a time, side by side in one `run_bench` run.

    python scripts/cpu_speed_steps.py --size 512x512 --scale 2 --threads 2 --repeat 10 --json steps.json

Rows (each adds one change to the row above, unless it says otherwise):
  autograd on          plain eager forward with autograd recording (what a training-style call costs)
  no_grad              torch.no_grad()
  inference_mode       torch.inference_mode()            <- `srkd bench --backend torch`
  channels_last        + NHWC weights and input
  fused                + re-parameterised fire blocks (archs/squeezesr_fused.py), in-place ReLU/add
  fused, tiles T       + cache-sized tiles with an exact halo (runtime.tiles.HaloTiles)  <- `--backend torch-opt`
  onnxruntime G        the model exported to ONNX as graph G, whole image, all threads on each op:
                       G = plain, fused (archs.squeezesr_fused.reparameterize) or split (archs.squeezesr_fused.split_stream)
  ... shuffle outside  split graph without its pixel shuffle (archs.squeezesr_fused.Subpixel), shuffled by torch
  ... strips           + one strip (with halo) per thread, one single-threaded session each,
                       shuffled while copied into place (runtime.tiles.HaloTiles)
  ... pieces HxW       + pieces of at most runtime.tiles.ORT_CPU_TILE instead of strips; "no symbolic
                       shapes": exported without them (runtime.onnx_shapes.with_symbolic_shapes)
  ... column pairs     + the tail computing two columns per pixel (x2; archs.squeezesr_fused._paired_conv)
                       <- `--backend onnxruntime`; then other piece bounds (`--ort-tiles`)
  torchscript          traced, frozen, optimize_for_inference (plain model)
  compile              torch.compile (inductor, freezing) of the fused channels_last model (with --compile)

Params and MACs of every row are the plain model's, so `floor_ratio` compares like with like.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srkd_cli.archs import build_model  # noqa: E402
from srkd_cli.archs.squeezesr_fused import Subpixel, receptive_radius, reparameterize, split_stream  # noqa: E402
from srkd_cli.backends import onnx_runner, prepare  # noqa: E402
from srkd_cli.bench import parse_size, run_bench, write_json  # noqa: E402
from srkd_cli.runtime.allocator import tune_cpu_allocator  # noqa: E402
from srkd_cli.runtime.ort import OnnxModel  # noqa: E402
from srkd_cli.runtime.tiles import ORT_CPU_TILE, HaloTiles  # noqa: E402


class WithGrad(nn.Module):
    """Runs the model with autograd recording, even inside the bench's inference_mode."""

    def __init__(self, model: nn.Module, grad: bool):
        super().__init__()
        self.model, self.grad, self.scale = model, grad, model.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False), torch.set_grad_enabled(self.grad):
            return self.model(x.clone()).detach()


class ChannelsLast(nn.Module):
    """The plain model with NHWC weights, fed NHWC input."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self.scale = model.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="512x512")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--tiles", default="128,256", help="tile sizes to try, comma-separated")
    ap.add_argument("--ort-tiles", default="128x128,256x256",
                    help="onnxruntime piece bounds to try besides the default, HxW comma-separated")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (compiles for minutes)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--tune-malloc", action="store_true", help="runtime.allocator.tune_cpu_allocator() first")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.tune_malloc and not tune_cpu_allocator():
        sys.exit("--tune-malloc: not a glibc system")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = parse_size(args.size)
    torch.manual_seed(0)
    plain = build_model("squeezesr", args.scale).eval()
    fused_cl = reparameterize(plain, channels_last=True)
    halo = receptive_radius(plain)
    tiles = [int(t) for t in args.tiles.split(",") if t]
    rows = [
        ("autograd on", WithGrad(plain, True), plain),
        ("no_grad", WithGrad(plain, False), plain),
        ("inference_mode", plain, plain),
        ("channels_last", ChannelsLast(plain), plain),
        ("fused", fused_cl, plain),
    ]
    rows += [(f"fused, tiles {t}", HaloTiles(fused_cl, args.scale, halo, (t, t)), plain) for t in tiles]
    if not args.no_onnx:
        from srkd_cli.runtime.graph import onnx_bytes

        n = torch.get_num_threads()
        split = split_stream(plain)  # the rows before "column pairs"
        paired = split_stream(plain, pair_columns=None)  # what --backend onnxruntime runs (column pairs at x2)
        rows += [(f"onnxruntime {g}", OnnxModel.from_torch(m, threads=n), plain)
                 for g, m in (("plain", plain), ("fused", reparameterize(plain)))]
        rows += [("onnxruntime split", OnnxModel.from_torch(split, threads=n), plain),
                 ("... shuffle outside", OnnxModel.from_torch(Subpixel(split), threads=n), plain)]
        if n > 1:
            def session(m, **kw):
                return OnnxModel(onnx_bytes(Subpixel(m), **kw), threads=1)

            bounds = [ORT_CPU_TILE] + [tuple(int(v) for v in t.split("x")) for t in args.ort_tiles.split(",") if t]
            rows.append(("... strips", HaloTiles(session(split), args.scale, halo, None, workers=n), plain))
            rows.append((f"... pieces {ORT_CPU_TILE[0]}x{ORT_CPU_TILE[1]}, no symbolic shapes",
                         HaloTiles(session(split, symbolic_shapes=False), args.scale, halo, ORT_CPU_TILE, workers=n), plain))
            rows.append((f"... pieces {ORT_CPU_TILE[0]}x{ORT_CPU_TILE[1]}",
                         HaloTiles(session(split), args.scale, halo, ORT_CPU_TILE, workers=n), plain))
            if paired.column_pairs > 1:
                rows.append(("... tail in column pairs (--backend onnxruntime)", onnx_runner(plain, threads=n), plain))
            rows += [(f"... pieces {h}x{w} instead", HaloTiles(session(paired), args.scale, halo, (h, w), workers=n), plain)
                     for h, w in dict.fromkeys(bounds[1:]) if (h, w) != ORT_CPU_TILE]
    x = torch.rand(1, 3, size[1], size[0])
    rows.append(("torchscript", prepare(plain, "torchscript", example=x), plain))
    if args.compile:
        rows.append(("compile", prepare(plain, "compile"), plain))
    records = run_bench(rows, size=size, scale=args.scale, repeat=args.repeat, warmup=args.warmup,
                        threads=args.threads, memory=False)
    from srkd_cli.cli.bench import render_table
    from rich.console import Console

    Console(width=200).print(render_table(
        records, f"SqueezeSR x{args.scale} {size[0]}x{size[1]}, {records.threads} thread(s), "
                 f"malloc {'tuned' if args.tune_malloc else 'default'}, dense conv {records.conv_macs_per_s / 1e9:.1f} GMAC/s "
                 f"({', '.join(f'{k} {v / 1e9:.1f}' for k, v in records.conv_rates.items())})"))
    if args.json:
        write_json(records, args.json)


if __name__ == "__main__":
    main()
