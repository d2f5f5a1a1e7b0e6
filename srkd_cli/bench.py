"""`srkd bench`: speed of models against bicubic baselines, measured side by side in one run.

What each record field means and how it is measured (docs/performance.md has the long form):

- `params`: all of `model.parameters()` of the torch model (0 for bicubic).
- `macs_per_pixel`: multiply-accumulates per *output* pixel, counted by
  `torch.utils.flop_counter.FlopCounterMode` on a forward of the torch model at the bench
  size (on the meta device, so nothing is computed): convolutions, linear layers and the
  attention matmuls (q@k, attn@v); MACs = counted FLOPs / 2. Element-wise ops, softmax and
  norms are not counted. Always the original model's count, whatever the backend runs (a
  re-parameterised SqueezeSR computes some zero taps: see archs/squeezesr_fused.py). Bicubic rows say 48:
  a 4x4 kernel over 3 channels, nominal rather than counted.
- `median_s`, `min_s`, `max_s`: seconds per call over `repeat` timed calls after `warmup`
  calls. Rows are timed in interleaved rounds (row 1, row 2, ..., row 1, ...), so a load
  that comes and goes on a shared machine hits every row alike. Calls faster than 5 ms are
  timed in loops of several calls and divided. CUDA calls are synchronised.
- `mp_per_s`: output megapixels per second at the median.
- `peak_mem_mb`: extra memory one call needs beyond the model and its input. CUDA: the growth
  of `torch.cuda.max_memory_allocated` over a call. CPU: in a fresh child process per row,
  the growth of the peak resident set (VmHWM, reset through /proc/self/clear_refs) over the
  first call, with glibc told to return freed blocks of 64 KiB and more to the system
  (MALLOC_MMAP_THRESHOLD_) so reused heap cannot hide memory. None where not measured.
- `ratio_to_opencv`: median_s / the median of OpenCV's bicubic on the same input.
- `floor_s`: the model's MACs / the machine's multiply-accumulate rate for a dense 64 -> 64
  channel 3x3 convolution at the bench size, measured in the same rounds: the fastest of
  torch NCHW, torch channels_last and (when installed) onnxruntime; `floor_ratio` =
  median_s / floor_s. None for bicubic rows,
  which are bound by memory, not arithmetic.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .atomic import write_report
from .config import check_scale, parse_setting
from .errors import ConfigError, ModelNotFoundError

RECORD_KEYS = (
    "model", "scale", "size", "device", "backend", "precision", "params", "macs_per_pixel", "median_s", "min_s", "max_s",
    "mp_per_s", "peak_mem_mb", "ratio_to_opencv", "floor_s", "floor_ratio",
)
BICUBIC_ROWS = ("bicubic-torch", "bicubic-opencv", "bicubic-pillow", "bicubic-matlab")
BICUBIC_MACS = 48.0  # 4x4 taps x 3 channels per output pixel, nominal
UNTRAINED = " (untrained)"
MIN_SAMPLE_S = 0.005
FLOOR_CONV_MAX_PIXELS = 1024 * 1024  # the dense conv's rate is flat beyond this; spare the memory
# A name, a module, (label, module), or (label, runner, model whose params and MACs to report).
ModelArg = Union[str, nn.Module, Tuple[str, nn.Module], Tuple[str, Any, nn.Module]]


class BenchRecords(list):
    """The records (a list of dicts), plus what the run measured about the machine."""

    conv_macs_per_s: float = float("nan")
    conv_rates: Dict[str, float]  # each dense-conv measurement: name -> MAC/s
    threads: int = 0
    notes: List[str]


@dataclass
class ResolvedModel:
    label: str
    model: nn.Module
    trained: bool
    counted: Optional[nn.Module] = None  # the model whose params and MACs are reported, if not `model`


@dataclass
class _Row:
    name: str
    backend: str
    device: torch.device
    call: Callable[[], Any]
    params: int = 0
    macs_per_pixel: Optional[float] = None
    child: Optional[Dict[str, Any]] = None  # recipe for the CPU memory measurement
    times: List[float] = field(default_factory=list)
    inner: int = 1
    peak_mem_mb: Optional[float] = None
    precision: str = "fp32"


# ----------------------------------------------------------------------------- models


def parse_size(text: str) -> Tuple[int, int]:
    """'512x384' -> (512, 384) as (width, height); '256' -> (256, 256)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+))?\s*", str(text))
    if not m:
        raise ConfigError(f"--size {text}: give WIDTHxHEIGHT, e.g. 512x512")
    w = int(m.group(1))
    h = int(m.group(2) or w)
    if not (4 <= w <= 16384 and 4 <= h <= 16384):
        raise ConfigError(f"--size {text}: width and height must be between 4 and 16384")
    return w, h


def _arch_with_overrides(text: str, scale: int) -> Optional[ResolvedModel]:
    """'swinir:blocks=2,depth=6' or 'squeezesr' -> an untrained model; None if not an architecture."""
    from .archs import get_arch

    name, _, opts = text.partition(":")
    try:
        spec = get_arch(name)
    except ConfigError:
        return None
    cfg: Dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in opts.split(","))):
        try:
            key, value = parse_setting(part)
        except ValueError:
            raise ConfigError(f"--model {text}: options go as KEY=VALUE, e.g. swinir:blocks=2") from None
        cfg[key] = value
    torch.manual_seed(0)
    return ResolvedModel(text + UNTRAINED, spec.build(scale, **cfg).eval(), trained=False)


def resolve_model(name: str, scale: int) -> ResolvedModel:
    """A model to time, from a weights file, a zoo name, or an architecture name.

    Never downloads: speed does not depend on the weights' values, so a zoo model whose file
    is neither bundled nor cached is timed as its architecture with untrained weights, and the
    label says so. `ARCH` or `ARCH:KEY=VALUE,...` (e.g. `swinir:blocks=1`) builds an untrained
    architecture directly.
    """
    from .archs import get_arch, list_archs
    from .loader import load_model
    from .zoo import get_zoo

    try:
        ref = get_zoo().identify(name, scale=scale, strict=False)  # None: perhaps an architecture
    except ModelNotFoundError:  # a zoo model at another scale
        ref = None
    if ref is not None and ref.path is not None:
        lm = load_model(ref, scale=scale)
        return ResolvedModel(ref.path.name, lm.model.eval(), trained=True)
    if ref is not None and ref.entry is not None:
        entry = ref.entry
        try:
            lm = load_model(ref, scale=scale, offline=True)
            return ResolvedModel(entry.name, lm.model.eval(), trained=True)
        except ModelNotFoundError:  # neither bundled nor cached: time the architecture
            torch.manual_seed(0)
            model = get_arch(entry.arch).build(entry.scale, **entry.config).eval()
            return ResolvedModel(entry.name + UNTRAINED, model, trained=False)
    found = _arch_with_overrides(name, scale)
    if found is None:
        raise ModelNotFoundError(
            f"--model {name}: not a file, a zoo model (`srkd models`) or an architecture "
            f"({', '.join(list_archs())}, optionally with options: swinir:blocks=2)")
    return found


def count_macs(model: nn.Module, size: Tuple[int, int], scale: int) -> float:
    """Multiply-accumulates per output pixel of one forward at `size` (W, H), counted (see module doc)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    w, h = size
    try:
        m = copy.deepcopy(model).to("meta")
        x = torch.empty(1, 3, h, w, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(x)
    except (RuntimeError, NotImplementedError, TypeError):
        # An op without a meta kernel: count on a real forward instead (slower, same count).
        x = torch.rand(1, 3, h, w)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.cpu()(x)
    return counter.get_total_flops() / 2 / (h * w * scale * scale)


# ----------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(row: _Row) -> float:
    _sync(row.device)
    t0 = time.perf_counter()
    for _ in range(row.inner):
        row.call()
    _sync(row.device)
    return (time.perf_counter() - t0) / row.inner


def _bicubic_rows(x: torch.Tensor, scale: int, device: torch.device, size: Tuple[int, int]) -> List[_Row]:
    import cv2
    from PIL import Image

    from .imaging.imresize import imresize

    w, h = size
    img = (x[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(img)
    xd = x.to(device)
    cpu = torch.device("cpu")
    rows = [
        _Row("bicubic-torch", "torch", device,
             lambda: F.interpolate(xd, scale_factor=scale, mode="bicubic", align_corners=False, antialias=False)),
        _Row("bicubic-opencv", "opencv", cpu,
             lambda: cv2.resize(img, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)),
        _Row("bicubic-pillow", "pillow", cpu, lambda: pil.resize((w * scale, h * scale), Image.BICUBIC)),
        _Row("bicubic-matlab", "torch", device, lambda: imresize(xd, scale=scale)),
    ]
    for r in rows:
        r.macs_per_pixel = BICUBIC_MACS
        r.precision = "uint8" if r.backend in ("opencv", "pillow") else "fp32"
        r.child = {"kind": r.name, "device": str(r.device)}
    return rows


def _floor_rows(size: Tuple[int, int], device: torch.device, threads: Optional[int]) -> List[_Row]:
    """Dense 64->64 3x3 convs whose best rate defines the floor: torch NCHW and channels_last,
    and onnxruntime when it is installed (its NCHWc kernels beat oneDNN's on some CPUs)."""
    w, h = size
    if w * h > FLOOR_CONV_MAX_PIXELS:
        f = math.sqrt(FLOOR_CONV_MAX_PIXELS / (w * h))
        w, h = max(8, int(w * f)), max(8, int(h * f))
    torch.manual_seed(0)
    macs = 64 * 64 * 9 * h * w  # total, not per pixel: for the rate
    rows = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        conv = nn.Conv2d(64, 64, 3, padding=1).to(device, memory_format=fmt).eval()
        feat = torch.rand(1, 64, h, w, device=device).contiguous(memory_format=fmt)
        name = f"conv64-{'nhwc' if fmt is torch.channels_last else 'nchw'}"
        rows.append(_Row(name, "torch", device, lambda conv=conv, feat=feat: conv(feat), macs_per_pixel=macs))
    if device.type == "cpu":
        try:
            import onnxruntime as ort
        except ImportError:
            return rows
        import io
        import warnings

        conv = nn.Conv2d(64, 64, 3, padding=1).eval()
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(conv, (torch.rand(1, 64, 8, 8),), buf, dynamo=False, opset_version=17,
                              input_names=["x"], dynamic_axes={"x": {2: "h", 3: "w"}})
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        # Its idle threads would otherwise spin for a while after each call, on the cores the next row needs.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
        feat = np.random.default_rng(0).random((1, 64, h, w), dtype=np.float32)
        rows.append(_Row("conv64-onnxruntime", "onnxruntime", device,
                         lambda: session.run(None, {"x": feat}), macs_per_pixel=macs))
    return rows


# ----------------------------------------------------------------------------- memory


def _read_status() -> Dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def _memory_child(recipe: Dict[str, Any]) -> Tuple[Optional[float], str]:
    """In a fresh process: (MB the peak RSS grows by over one call, or None; why not) (see module doc)."""
    if not Path("/proc/self/clear_refs").exists():
        return None, "no /proc/self/clear_refs on this system"
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-c", "import sys, srkd_cli.bench as b; b._memory_main(sys.argv[1])", json.dumps(recipe)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"memory child failed: {e}"
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("PEAK ")]
    if done.returncode == 0 and lines:
        return float(lines[-1].split()[1]), ""
    err = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return None, f"memory child failed: {err[:200]}"


def _memory_main(recipe_json: str) -> None:
    """Child side of `_memory_child`: set up the row, then measure one call."""
    r = json.loads(recipe_json)
    if r.get("threads"):
        torch.set_num_threads(int(r["threads"]))
    w, h = r["size"]
    scale = int(r["scale"])
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    if r["kind"] == "model":
        from .backends import prepare

        model = torch.load(r["model_file"], map_location="cpu", weights_only=False)
        runner = prepare(model, r["backend"], "cpu", example=x, threads=r.get("threads"), precision=r.get("precision", "fp32"))

        def call():
            with torch.inference_mode():
                return runner(x)

        if r["backend"] in ("compile", "torchscript"):
            call()  # compiling or profiling run first: that is set-up, not the call's memory
    else:
        row = next(row for row in _bicubic_rows(x, scale, torch.device("cpu"), (w, h)) if row.name == r["kind"])
        call = row.call
    gc.collect()
    before = _read_status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    out = call()
    peak = _read_status()["VmHWM"]
    del out
    print(f"PEAK {(peak - before) / 2**20:.1f}")


def _cuda_peak(row: _Row) -> Optional[float]:
    if row.device.type != "cuda" or row.backend == "onnxruntime":
        return None
    torch.cuda.synchronize(row.device)
    torch.cuda.reset_peak_memory_stats(row.device)
    before = torch.cuda.memory_allocated(row.device)
    out = row.call()
    torch.cuda.synchronize(row.device)
    peak = torch.cuda.max_memory_allocated(row.device)
    del out
    return (peak - before) / 2**20


# ----------------------------------------------------------------------------- the run


def run_bench(
    models: Sequence[ModelArg] = ("squeezesr",),
    size: Tuple[int, int] = (512, 512),
    scale: int = 2,
    device: Union[str, torch.device] = "cpu",
    repeat: int = 10,
    warmup: int = 2,
    backends: Sequence[str] = ("torch",),
    threads: Optional[int] = None,
    memory: bool = True,
    progress: Optional[Callable[[str], None]] = None,
    precisions: Sequence[str] = ("fp32",),
) -> BenchRecords:
    """Time `models` on each of `backends` and the bicubic baselines on one (1,3,H,W) input.

    `models` holds names (see `resolve_model`), modules, (label, module) pairs, or (label,
    module, counted) where params and MACs come from `counted` (e.g. the model a fused or
    exported runner was made from); `size` is the input's (width, height). Returns one record
    per row with the keys in RECORD_KEYS.

    A backend "auto" is what `srkd upscale` would run for each model (`backends.pick_backend`).
    `precisions` (those backends' own graphs run: fp32, int8) time each backend at each precision
    it has, side by side in the same rounds; a model, backend and device that cannot run int8
    (`backends.incompatibility`) get a note instead of a row.
    """
    from .backends import BACKENDS, check_backend, incompatibility, pick_backend, prepare
    from .inference import pick_device

    check_scale(scale)
    if repeat < 1 or warmup < 0:
        raise ConfigError("--repeat must be at least 1 and --warmup at least 0")
    for b in backends:
        check_backend(b)
    own = tuple(dict.fromkeys(p for b in BACKENDS.values() for p in b.precisions))
    for p in precisions:
        if p not in own:
            raise ConfigError(f"--precision {p}: bench times {' and '.join(own)}")
    dev = device if isinstance(device, torch.device) else pick_device(device)
    import cv2

    saved_threads = (torch.get_num_threads(), cv2.getNumThreads())
    if threads:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    say = progress or (lambda msg: None)
    w, h = size
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    xd = x.to(dev)
    notes: List[str] = []

    rows: List[_Row] = []
    tmpdir = tempfile.TemporaryDirectory(prefix="srkd-bench-")
    try:
        for i, m in enumerate(models):
            if isinstance(m, str):
                rm = resolve_model(m, scale)
            elif isinstance(m, tuple):
                rm = ResolvedModel(m[0], m[1], trained=True, counted=m[2] if len(m) > 2 else None)
            else:
                rm = ResolvedModel(type(m).__name__, m, trained=True)
            if int(getattr(rm.model, "scale", scale)) != scale:
                raise ConfigError(f"{rm.label}: upscales x{rm.model.scale}, not x{scale}")
            if not rm.trained:
                notes.append(f"{rm.label}: random weights (no trained file here); speed does not depend on them")
            say(f"counting {rm.label}")
            model = rm.model.eval()
            if isinstance(model, nn.Module):
                model = model.cpu()
            counted = (rm.counted or model).eval().cpu()
            params = sum(p.numel() for p in counted.parameters())
            macs = count_macs(counted, size, scale)
            model_file = None
            if memory and dev.type == "cpu":
                model_file = str(Path(tmpdir.name) / f"model{i}.pt")
                try:
                    torch.save(model, model_file)
                except Exception as e:  # e.g. a module holding an onnxruntime session: not picklable
                    notes.append(f"{rm.label}: peak memory not measured ({type(e).__name__}: cannot hand it to a child)")
                    model_file = None
            done = set()
            for asked in backends:
                for prec in precisions:
                    b = pick_backend(model, dev, prec, note=lambda n: n in notes or notes.append(n)) if asked == "auto" else asked
                    if (b, prec) in done:
                        continue
                    done.add((b, prec))
                    why = incompatibility(model, b, dev, prec) if prec != "fp32" else None
                    if why:
                        notes.append(f"{rm.label} ({b}): no {prec} row ({why})")
                        continue
                    say(f"preparing {rm.label} on {b} {prec}")
                    runner = prepare(model, b, dev, example=xd, threads=threads, precision=prec, say=say)

                    def call(runner=runner):
                        with torch.inference_mode():
                            return runner(xd)

                    row = _Row(rm.label, b, dev, call, params, macs, precision=prec)
                    if model_file:
                        row.child = {"kind": "model", "model_file": model_file, "backend": b, "precision": prec}
                    rows.append(row)
        rows += _bicubic_rows(x, scale, dev, size)
        floor_rows = _floor_rows(size, dev, threads)
        timed = rows + floor_rows

        for row in timed:  # warm-up, and loops for calls too quick to time one by one
            say(f"warming up {row.name} ({row.backend})")
            for _ in range(warmup):
                row.call()
            t = _time_once(row)
            row.inner = max(1, min(1000, math.ceil(MIN_SAMPLE_S / max(t, 1e-7)))) if t < MIN_SAMPLE_S else 1
        for k in range(repeat):
            say(f"round {k + 1}/{repeat}")
            for row in timed:
                row.times.append(_time_once(row))

        if memory:
            for row in rows:
                if row.device.type == "cuda":
                    row.peak_mem_mb = _cuda_peak(row)
                elif row.child is not None:
                    say(f"memory of {row.name} ({row.backend})")
                    recipe = dict(row.child, size=[w, h], scale=scale, threads=threads or torch.get_num_threads())
                    row.peak_mem_mb, why = _memory_child(recipe)
                    if why:
                        notes.append(f"{row.name} ({row.backend}): peak memory not measured: {why}")
        n_threads = torch.get_num_threads()
    finally:
        tmpdir.cleanup()
        torch.set_num_threads(saved_threads[0])
        cv2.setNumThreads(saved_threads[1])

    rates = {r.name: r.macs_per_pixel / statistics.median(r.times) for r in floor_rows}
    rate = max(rates.values())
    out_px = w * h * scale * scale
    opencv = statistics.median(next(r for r in rows if r.name == "bicubic-opencv").times)
    records = BenchRecords()
    records.conv_macs_per_s = rate
    records.conv_rates = rates
    records.threads = n_threads
    records.notes = notes
    for r in rows:
        med = statistics.median(r.times)
        is_model = r.name not in BICUBIC_ROWS
        floor = r.macs_per_pixel * out_px / rate if is_model else None
        records.append({
            "model": r.name,
            "scale": scale,
            "size": f"{w}x{h}",
            "device": str(r.device),
            "backend": r.backend,
            "precision": r.precision,
            "params": int(r.params),
            "macs_per_pixel": round(float(r.macs_per_pixel), 1) if r.macs_per_pixel is not None else None,
            "median_s": med,
            "min_s": min(r.times),
            "max_s": max(r.times),
            "mp_per_s": out_px / 1e6 / med,
            "peak_mem_mb": None if r.peak_mem_mb is None else round(r.peak_mem_mb, 1),
            "ratio_to_opencv": med / opencv,
            "floor_s": floor,
            "floor_ratio": med / floor if floor else None,
        })
    return records


def write_json(records: Sequence[Dict[str, Any]], path: Union[str, os.PathLike], overwrite: bool = True) -> None:
    """Write the records as a JSON list, atomically ('-' for stdout); an existing file only with `overwrite`."""
    write_report("--json", path, json.dumps(list(records), indent=2) + "\n", overwrite)


__all__ = ["BICUBIC_ROWS", "BenchRecords", "RECORD_KEYS", "ResolvedModel", "count_macs", "parse_size",
           "resolve_model", "run_bench", "write_json"]
