#!/usr/bin/env python
"""fp32 against int8 (QDQ, QOperator) on an AVX2 CPU, counted in instructions under valgrind.

    python scripts/int8_instructions.py -m squeezesr-x2 --size 128

No CPU without VNNI is at hand, and timings under emulation mean nothing; but valgrind's
synthetic CPU offers AVX2 and no AVX-512, so onnxruntime picks its AVX2 kernels there, and
callgrind counts the instructions a forward executes (repeatable, whatever the machine's load).
Each graph runs in one onnxruntime session with one thread on a `--size` square input; a
forward's count is (count with 1 + `--forwards` calls - count with 1 call) / `--forwards`, so
start-up and session creation cancel. The int8 graphs are the shipped recipe
(`srkd_cli/quantize.py`) with the weight bits given (7: what srkd picks on such a CPU), the fp32
graph is the one `--backend onnxruntime` runs. Each line also gives the graph's mean |difference|
from the same graph run natively, in grey levels: ~0 says valgrind computed what this CPU does;
an 8-bit int8 graph far off says the kernels saturate, i.e. the AVX2 path ran (`--bits 8`).
Needs valgrind (Debian's package). Prints one JSON line per graph.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def run_graph(path: str, x_path: str, calls: int, out_path: str) -> None:
    """The part valgrind runs: numpy and onnxruntime only, so its start-up stays short."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.load(x_path)
    name = sess.get_inputs()[0].name
    for _ in range(calls):
        y = sess.run(None, {name: x})[0]
    np.save(out_path, y)


def callgrind(graph: Path, x: Path, calls: int, work: Path) -> tuple:
    out = work / f"{graph.stem}-{calls}.cg"
    y = work / f"{graph.stem}-{calls}-vg.npy"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
           "--run", str(graph), str(x), str(calls), str(y)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"Collected : (\d+)", res.stderr)
    if res.returncode or not m:
        raise SystemExit(f"valgrind failed on {graph.name}: {res.stderr.strip().splitlines()[-1:]}")
    return int(m.group(1)), np.load(y)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        run_graph(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="squeezesr-x2")
    ap.add_argument("--size", type=int, default=128, help="square LR input side")
    ap.add_argument("--forwards", type=int, default=2)
    ap.add_argument("--bits", type=int, choices=(7, 8), default=7, help="int8 weight bits")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from srkd_cli.archs import spec_for
    from srkd_cli.loader import load_model
    from srkd_cli.quantize import calibration_crops, calibration_files, quantize_bytes
    from srkd_cli.runtime.graph import onnx_bytes

    model = load_model(args.model, device="cpu").model.eval()
    spec = spec_for(model)
    crops = calibration_crops(calibration_files()[1], model.scale)
    graphs = {
        "fp32": onnx_bytes(spec.graph_form(model) if spec.graph_form else model),
        "int8-qdq": quantize_bytes(model, crops, bits=args.bits, fmt="qdq"),
        "int8-qoperator": quantize_bytes(model, crops, bits=args.bits, fmt="qoperator"),
    }
    with tempfile.TemporaryDirectory(prefix="srkd-instr-") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        x = work / "x.npy"
        np.save(x, torch.rand(1, 3, args.size, args.size).numpy())
        counts = {}
        for name, data in graphs.items():
            g = work / f"{name}.onnx"
            g.write_bytes(data)
            sess = ort.InferenceSession(str(g), providers=["CPUExecutionProvider"])
            native = sess.run(None, {sess.get_inputs()[0].name: np.load(x)})[0]
            one, _ = callgrind(g, x, 1, work)
            many, y = callgrind(g, x, 1 + args.forwards, work)
            counts[name] = (many - one) / args.forwards
            diff = float(np.abs(np.clip(y, 0, 1) - np.clip(native, 0, 1)).mean() * 255)
            print(json.dumps({"graph": name, "model": args.model, "size": args.size, "weight_bits": args.bits,
                              "instructions_per_forward": int(counts[name]),
                              "fp32_over_this": round(counts["fp32"] / counts[name], 3),
                              "grey_diff_from_native": round(diff, 3)}), flush=True)


if __name__ == "__main__":
    main()
