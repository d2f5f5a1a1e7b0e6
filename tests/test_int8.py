"""int8 SqueezeSR and RepSR on onnxruntime (srkd_cli/quantize.py): export, closeness to fp32, clear errors,
the fallback when onnxruntime is missing, and the calibration cache.

Calibrated on the bundled Set5 HR (SRKD_CALIBRATION_DATA) into a per-session cache, so the whole
file quantises each model once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime.quantization")
pytest.importorskip("onnx")

from srkd_cli import quantize  # noqa: E402
from srkd_cli.archs import build_model, get_arch  # noqa: E402
from srkd_cli.checkpoint import save_checkpoint  # noqa: E402
from srkd_cli.evaluate import to_tensor  # noqa: E402
from srkd_cli.imaging.io import read_uint8  # noqa: E402
from srkd_cli.loader import load_model  # noqa: E402
from srkd_cli.metrics import to_uint8  # noqa: E402

# Measured on Set5 with the bundled squeezesr-x2 (docs/performance.md): int8 vs fp32 outputs differ
# by 0.76 grey levels on average for bird (0.72-0.88 over Set5, calibrated on Set5 or the training
# sets), 47.8 dB PSNR between them. The bounds leave room for other CPUs' rounding.
MEAN_GREY_TOLERANCE = 1.0
MIN_PSNR_VS_FP32 = 45.0


pytestmark = pytest.mark.usefixtures("int8_env")


@pytest.mark.parametrize("name", ["squeezesr-x2", "repsr-x2"])
def test_int8_export_is_close_to_fp32_and_pieces_equal_whole(name, tmp_path, set5, run_cli):
    from srkd_cli.backends import prepare
    from srkd_cli.runtime.ort import OnnxModel
    from srkd_cli.runtime.tiles import HaloTiles

    lm = load_model(name, scale=2)
    x2 = lm.model
    out = tmp_path / "x2-int8.onnx"
    code, stdout, err = run_cli("export", name, "-o", out, "--int8")
    assert code == 0, err
    assert out.is_file() and "onnx int8" in stdout
    exported = OnnxModel(out, threads=1)
    assert exported.metadata["precision"] == "int8" and exported.metadata["arch"] == lm.spec.name and exported.scale == 2

    x = to_tensor(read_uint8(set5 / "LR_bicubic" / "X2" / "birdx2.png")).float()
    pieces = prepare(x2, "onnxruntime", "cpu", threads=2, precision="int8")
    assert isinstance(pieces, HaloTiles) and pieces.workers == 2  # the fp32 backend's cache-sized pieces
    with torch.inference_mode():
        ref = x2(x).clamp(0, 1)
        got = pieces(x).clamp(0, 1)
        whole = exported(x).clamp(0, 1)
    # Quantised convs pad with the zero point, i.e. 0.0: pieces with the halo equal one whole call.
    assert (got - whole).abs().max().item() < 1e-5
    a, b = to_uint8(ref).astype(np.float64), to_uint8(got).astype(np.float64)
    mean_grey = np.abs(a - b).mean()
    psnr = 10 * np.log10(255 ** 2 / ((a - b) ** 2).mean())
    assert mean_grey <= MEAN_GREY_TOLERANCE and psnr >= MIN_PSNR_VS_FP32, (mean_grey, psnr)


def test_int8_upscale_and_eval_run_the_int8_path(run_cli, tmp_path, set5):
    src = set5 / "LR_bicubic" / "X2" / "birdx2.png"
    code, out, err = run_cli("upscale", src, "-o", tmp_path / "b.png", "--scale", "2", "--precision", "int8", "--device", "cpu")
    assert code == 0, err
    assert "(onnxruntime int8)" in out
    code, out, err = run_cli("eval", "-m", "squeezesr-x2", "-d", set5, "-s", "2", "--device", "cpu", "--precision", "int8",
                             "--json", tmp_path / "e.json")
    assert code == 0, err
    import json

    rec = json.loads((tmp_path / "e.json").read_text())[0]
    assert rec["model"] == "squeezesr-x2 (int8)"
    assert 36.5 < rec["psnr_y"] < 36.92  # fp32 36.92; int8 36.77 (docs/performance.md)


def test_int8_on_other_paths_is_one_clear_line(run_cli, tmp_path, set5):
    src = set5 / "LR_bicubic" / "X2" / "birdx2.png"
    edsr = tmp_path / "edsr.safetensors"
    cfg = get_arch("edsr-t").config(n_feats=8, blocks=1)
    save_checkpoint(edsr, build_model("edsr-t", 2, **cfg), "edsr-t", cfg)
    cases = [
        (["--scale", "2", "--backend", "torch"], "--precision int8 runs on --backend onnxruntime"),
        (["--scale", "2", "--backend", "torch-opt"], "--precision int8 runs on --backend onnxruntime"),
        (["-w", edsr], "only SqueezeSR, RepSR or SRVGGNetCompact-architecture models have an int8 path"),
    ]
    for extra, says in cases:
        code, out, err = run_cli("upscale", src, "-o", tmp_path / "o.png", "--precision", "int8", "--device", "cpu", *extra)
        assert code != 0 and says in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("export", str(edsr), "-o", tmp_path / "e.onnx", "--int8")
    assert code != 0 and "only SqueezeSR, RepSR or SRVGGNetCompact-architecture models" in err and "Traceback" not in err
    code, _, err = run_cli("export", "squeezesr-x2", "-o", tmp_path / "e.pt", "--int8", "--format", "torchscript")
    assert code != 0 and "--int8 writes ONNX" in err


def test_without_onnxruntime_auto_falls_back_with_one_line(run_cli, tmp_path, set5, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if no wheel existed for this platform
    src = set5 / "LR_bicubic" / "X2" / "birdx2.png"
    code, out, err = run_cli("upscale", src, "-o", tmp_path / "a.png", "--scale", "2", "--device", "cpu")
    assert code == 0, err
    assert "with repsr-x2" in out and "(torch-opt)" in out  # the default model, named
    notes = [ln for ln in err.splitlines() if "onnxruntime is not installed" in ln]
    assert len(notes) == 1 and "Traceback" not in err, err
    code, _, err = run_cli("upscale", src, "-o", tmp_path / "b.png", "--scale", "2", "--device", "cpu", "--precision", "int8")
    assert code != 0 and "needs onnxruntime" in err and len(err.strip().splitlines()) == 1, err


def test_calibration_is_deterministic_and_the_cache_is_reused(int8_env, monkeypatch):
    torch.manual_seed(0)
    model = build_model("squeezesr", 2, n_feats=8, blocks=1, squeeze=4, expand1x1=4).eval()
    folder, files = quantize.calibration_files()
    a = quantize.calibration_crops(files, 2, n=3)
    b = quantize.calibration_crops(files, 2, n=3)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))

    calls = []
    real = quantize.quantize_bytes
    monkeypatch.setattr(quantize, "quantize_bytes", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = quantize.int8_onnx_bytes(model)
    assert calls == [1] and len(list((int8_env / "int8").glob("squeezesr-x2-*.onnx"))) >= 1
    assert quantize.int8_onnx_bytes(model) == first and calls == [1]  # from the cache, not re-quantised
    with torch.no_grad():
        model.head.bias.add_(0.01)  # other weights: another key
    quantize.int8_onnx_bytes(model)
    assert calls == [1, 1]


def test_bench_times_fp32_and_int8_side_by_side():
    from srkd_cli.bench import run_bench

    torch.manual_seed(0)
    model = build_model("squeezesr", 2, n_feats=8, blocks=1, squeeze=4, expand1x1=4).eval()
    swin = build_model("swinir", 2, blocks=1).eval()
    records = run_bench([("sq", model), ("swin", swin)], size=(24, 24), scale=2, repeat=1, warmup=0, backends=("auto",),
                        threads=1, memory=False, precisions=("fp32", "int8"))
    rows = {(r["model"], r["backend"], r["precision"]) for r in records}
    assert {("sq", "onnxruntime", "fp32"), ("sq", "onnxruntime", "int8"), ("swin", "torch", "fp32")} <= rows
    assert not any(r["model"] == "swin" and r["precision"] == "int8" for r in records)
    assert any("swin (torch): no int8 row" in n for n in records.notes)
    int8 = next(r for r in records if r["precision"] == "int8")
    assert int8["floor_ratio"] is not None  # against the fp32 floor, like every model row


def _conv_weight_range(data: bytes):
    """(min, max) over the int8 conv weights that the graph dequantises."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(data)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    ws = [inits[n.input[0]] for n in proto.graph.node
          if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8
          and inits[n.input[0]].ndim == 4]
    assert ws, "no int8 conv weights in the graph"
    return min(int(w.min()) for w in ws), max(int(w.max()) for w in ws)


def test_seven_bit_weights_where_kernels_saturate(monkeypatch):
    """Without VNNI, x86 int8 kernels add u8 x s8 product pairs in saturating 16-bit lanes; srkd then
    quantises weights to 7 bits, in a graph cached apart from the 8-bit one."""
    torch.manual_seed(0)
    model = build_model("squeezesr", 2, n_feats=8, blocks=1, squeeze=4, expand1x1=4).eval()
    lo8, hi8 = _conv_weight_range(quantize.int8_onnx_bytes(model, bits="8"))
    lo7, hi7 = _conv_weight_range(quantize.int8_onnx_bytes(model, bits="7"))
    assert max(-lo8, hi8) == 127 and max(-lo7, hi7) == 64  # 255 x 64 x 2 < 32767: no lane overflows
    monkeypatch.setenv(quantize.WEIGHT_BITS_ENV, "7")
    assert quantize.weight_bits() == 7
    monkeypatch.setattr(quantize, "u8s8_saturates", lambda: True)
    monkeypatch.setenv(quantize.WEIGHT_BITS_ENV, "auto")
    assert quantize.weight_bits() == 7
    monkeypatch.setattr(quantize, "u8s8_saturates", lambda: False)
    assert quantize.weight_bits() == 8
    monkeypatch.setenv(quantize.WEIGHT_BITS_ENV, "6")
    with pytest.raises(quantize.ConfigError, match="choose auto, 8, 7"):
        quantize.weight_bits()


@pytest.mark.skipif(not __import__("shutil").which("qemu-x86_64") or __import__("platform").machine() != "x86_64",
                    reason="needs qemu-x86_64 (Debian qemu-user) to run a CPU without VNNI")
def test_the_probe_sees_saturation_on_a_cpu_without_vnni():
    """The probe's answer on an emulated Haswell (AVX2, no VNNI) and on this CPU, run for real."""
    import subprocess

    code = "from srkd_cli.runtime.u8s8 import u8s8_saturates; print(u8s8_saturates())"
    run = subprocess.run(["qemu-x86_64", "-cpu", "Haswell-noTSX", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-500:]
    assert run.stdout.strip().splitlines()[-1] == "True"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        assert quantize.u8s8_saturates() is False


def test_int8_without_a_model_runs_the_default_repsr(run_cli, tmp_path, set5, int8_env):
    """The default at every scale has an int8 path: --precision int8 alone quantises it, within
    0.15 dB of its fp32 score on Set5 (measured -0.08 at x2, docs/performance.md)."""
    import json

    src = set5 / "LR_bicubic" / "X2" / "birdx2.png"
    code, out, err = run_cli("upscale", src, "-o", tmp_path / "a.png", "--scale", "2", "--device", "cpu", "--precision", "int8")
    assert code == 0, err
    assert "with repsr-x2" in out and "(onnxruntime int8)" in out
    code, _, err = run_cli("eval", "-m", "repsr-x2", "-d", set5, "-s", "2", "--device", "cpu", "--precision", "int8",
                           "--json", tmp_path / "e.json")
    assert code == 0, err
    rec = json.loads((tmp_path / "e.json").read_text())[0]
    assert rec["model"] == "repsr-x2 (int8)"
    assert 37.295 - 0.15 < rec["psnr_y"] < 37.295  # fp32 37.295 (weights.toml)
