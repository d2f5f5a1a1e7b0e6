"""int8 models for onnxruntime's CPU: static quantisation, calibrated on training crops, cached.

A model whose architecture declares an int8 form (`ArchSpec.int8`, found by the model's class,
not its name) is turned into that form, a graph stopped before its pixel shuffle, and quantised
by `onnxruntime.quantization.quantize_static`: QDQ format, uint8 activations, int8 per-channel
weights, Percentile calibration on `RECIPE["crops"]` deterministic LR crops. The result runs like
the fp32 backend, in cache-sized pieces with an exact halo (`runtime.tiles.HaloTiles`: quantised
convs pad with the zero point, so pieces equal a whole-image call). `backends.check_precision`
says, in one line, where int8 cannot run. The forms:

- SqueezeSR (`archs.squeezesr_fused.int8_form`): re-parameterised (merged expands, no concat) and its
  residual stream equalised (`RECIPE["equalize"]`, below).
- RepSR (`archs.repsr.int8_form`): as it is, its nearest-neighbour residual a one-hot 1x1 conv.
  A plain stack of convs has no stream that every op reads, and lost 0.08 dB on Set5 x2 without
  any equalisation (docs/performance.md).

Why these settings (docs/performance.md has the measurements; SqueezeSR): QDQ ran faster than QOperator on
the AVX-512 VNNI CPU measured; the fused graph quantised better and ran faster than the split
one (whose stream carries `x + h`, a range twice as wide); Percentile beat MinMax and Entropy;
and equalising the stream (each of its 64 channels scaled by 1 / its calibration max, the
inverse folded into every conv that reads it; exact in float, through the ReLUs) gave the
narrow channels more of the 256 levels. What is left of the loss (0.15 dB on Set5 x2) is the
8-bit residual stream itself, which every op reads; keeping it in float costs more time than
int8 saves.

Weights get 8 bits where this CPU's onnxruntime kernels sum u8 x s8 products exactly (VNNI, AMX,
Arm dot products) and 7 bits (`reduce_range`) where they do not: without VNNI, x86 kernels add
pairs of products in saturating 16-bit lanes (255 x 127 x 2 > 32767), which measured 27.6 dB
instead of 36.8 on Set5 x2. `u8s8_saturates()` finds out by running a one-conv graph whose exact
answer is known, so the choice follows what the kernels do, not a CPU-flag list.

The quantised graph is cached under `cache_dir()`, keyed by the weights' sha256, the recipe
(weight bits included), the calibration files and the onnxruntime version, so it is made once
(a few seconds), not per call.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .archs import halo_radius, spec_for
from .atomic import atomic_write
from .errors import ConfigError, InputError
from .runtime.graph import onnx_bytes
from .runtime.ort import OnnxModel
from .runtime.tiles import ORT_CPU_TILE, HaloTiles
from .runtime.u8s8 import u8s8_saturates

# Bump "version" whenever what the recipe produces changes: it is part of the cache key.
RECIPE: Dict[str, Any] = {
    "version": 1, "format": "qdq", "activations": "uint8", "weights": "int8-per-channel",
    "calibration": "percentile", "equalize": 1.0, "crops": 32, "crop": 64, "seed": 0,
}
CALIBRATION_ENV = "SRKD_CALIBRATION_DATA"
WEIGHT_BITS = ("auto", "8", "7")
WEIGHT_BITS_ENV = "SRKD_INT8_WEIGHT_BITS"  # auto (default), 8 or 7: what `--precision int8` quantises with
_IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_REPO = Path(__file__).resolve().parents[1]
# int8 vs fp32, mean |difference| in grey levels (of 255) on natural images: int8 is approximate.
# Measured 0.7-1.1 (uint8 outputs) on Set5 for the bundled x2-x4 models (tests/test_int8.py, docs/performance.md).
INT8_TOLERANCE = 1.5


def supports_int8(model: nn.Module) -> bool:
    """Whether `model`'s architecture has an int8 path (`ArchSpec.int8`), whatever its name or weights."""
    spec = spec_for(model)
    return spec is not None and spec.int8 is not None


def require_quantization() -> None:
    """A one-line ConfigError unless onnx and onnxruntime's quantiser import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        raise ConfigError("--precision int8 needs onnxruntime and onnx, which have no wheel for this platform "
                          "or are not installed: pip install onnx onnxruntime") from None


def int8_difference(model: nn.Module, runner, inputs) -> float:
    """Mean |int8 - fp32| in grey levels (outputs clamped to [0,1], x255) over `inputs`: what INT8_TOLERANCE bounds."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x in inputs:
            ref, got = model(x).clamp(0, 1), runner(x).clamp(0, 1)
            total += float((got - ref).abs().sum()) * 255
            count += ref.numel()
    return total / max(1, count)


def weight_bits(choice: Optional[str] = None) -> int:
    """8, or 7 where this CPU's kernels saturate (`u8s8_saturates`); "8"/"7" force one.

    `choice` None reads $SRKD_INT8_WEIGHT_BITS (default auto).
    """
    if choice is None:
        choice = os.environ.get(WEIGHT_BITS_ENV, "").strip() or "auto"
    choice = str(choice)
    if choice not in WEIGHT_BITS:
        raise ConfigError(f"int8 weight bits {choice!r} (--weight-bits or ${WEIGHT_BITS_ENV}): "
                          f"choose {', '.join(WEIGHT_BITS)}")
    if choice != "auto":
        return int(choice)
    return 7 if u8s8_saturates() else 8


def recipe(bits: int) -> Dict[str, Any]:
    """RECIPE with the weight width that `quantize_bytes` will use."""
    return {**RECIPE, "weight_bits": int(bits)}


# ----------------------------------------------------------------------------- calibration data


def calibration_files(folder: Optional[Union[str, os.PathLike]] = None) -> Tuple[Path, List[Path]]:
    """(folder, its images, sorted) to calibrate on: `folder`, else $SRKD_CALIBRATION_DATA, else
    the training sets in ../shared/data/train beside the repository, else the bundled Set5 HR."""
    candidates = [Path(folder)] if folder else []
    if not candidates and os.environ.get(CALIBRATION_ENV):
        candidates = [Path(os.environ[CALIBRATION_ENV]).expanduser()]
    if not candidates:
        candidates = [_REPO.parent / "shared" / "data" / "train", _REPO / "tests" / "data" / "Set5" / "HR"]
    for c in candidates:
        if c.is_dir():
            files = sorted(p for p in c.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
            if files:
                return c, files
    raise InputError(f"int8 calibration needs images: none in {', '.join(str(c) for c in candidates)} "
                     f"(set {CALIBRATION_ENV}=DIR, a folder of training images)")


def calibration_crops(files: Sequence[Path], scale: int, n: int = RECIPE["crops"], size: int = RECIPE["crop"],
                      seed: int = RECIPE["seed"]) -> List[np.ndarray]:
    """`n` (1,3,size,size) float32 LR crops in [0,1]: random HR crops of size*scale (files in a
    seeded order, one crop each, files too small skipped, as many passes as needed), shrunk with
    the MATLAB bicubic the models were trained on. The same files give the same crops."""
    from .imaging.imresize import bicubic_downscale_uint8
    from .imaging.io import read_uint8

    rng = random.Random(seed)
    order = list(files)
    rng.shuffle(order)
    hs, out = size * scale, []
    for _ in range(max(1, -(-n // max(1, len(order))))):
        for f in order:
            if len(out) == n:
                return out
            hr = read_uint8(f)
            if hr.ndim == 2:
                hr = np.repeat(hr[..., None], 3, axis=2)
            hr = hr[..., :3]
            if hr.shape[0] < hs or hr.shape[1] < hs:
                continue
            y, x = rng.randrange(hr.shape[0] - hs + 1), rng.randrange(hr.shape[1] - hs + 1)
            lr = bicubic_downscale_uint8(np.ascontiguousarray(hr[y:y + hs, x:x + hs]), scale)
            out.append(np.ascontiguousarray((lr.astype(np.float32) / 255).transpose(2, 0, 1)[None]))
    if not out:
        raise InputError(f"int8 calibration: no image of at least {hs}x{hs} pixels among {len(order)} file(s)")
    return out


# ----------------------------------------------------------------------------- the graph


def weights_sha256(model: nn.Module) -> str:
    """sha256 of the model's class, state-dict names, shapes and values (float32 bytes)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{k}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def cache_dir() -> Path:
    """$SRKD_CACHE/int8, else $XDG_CACHE_HOME/srkd/int8, else ~/.cache/srkd/int8 (beside the zoo's URL cache)."""
    from .zoo import url_cache_dir

    return url_cache_dir().parent / "int8"


def cache_key(model: nn.Module, files: Sequence[Path], folder: Path, bits: int = 8) -> str:
    import onnxruntime

    files_id = [(str(p.relative_to(folder)), p.stat().st_size) for p in files]
    blob = json.dumps({"weights": weights_sha256(model), "scale": int(model.scale), "recipe": recipe(bits),
                       "calibration": files_id, "onnxruntime": onnxruntime.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def quantize_bytes(model: nn.Module, crops: Sequence[np.ndarray], meta: Optional[Dict[str, Any]] = None,
                   bits: int = 8, fmt: str = RECIPE["format"]) -> bytes:
    """The int8 ONNX graph of `model` (its `ArchSpec.int8` form; RECIPE, weights in `bits` 8 or 7), calibrated on `crops`; uncached.

    `fmt` "qoperator" instead of the recipe's "qdq" exists for scripts/int8_formats.py's comparison.
    """
    formats = {"qdq": "QDQ", "qoperator": "QOperator"}
    if fmt not in formats:
        raise ConfigError(f"int8 format {fmt!r}: choose {', '.join(formats)}")
    import onnx
    from onnxruntime import quantization as Q

    form = spec_for(model).int8(model.eval().cpu(), crops, RECIPE)
    meta = {"precision": "int8", "int8_recipe": {**recipe(bits), "format": fmt}, **(meta or {})}
    proto = onnx.load_from_string(onnx_bytes(form, meta=meta))

    class Reader(Q.CalibrationDataReader):
        def __init__(self):
            self._it = iter(crops)

        def get_next(self):
            a = next(self._it, None)
            return None if a is None else {proto.graph.input[0].name: a}

    quiet = logging.getLogger()
    level = quiet.level
    with tempfile.TemporaryDirectory(prefix="srkd-int8-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        # onnxruntime's quantiser logs advice (pre-processing) and prints histogram progress
        quiet.setLevel(logging.ERROR)
        try:
            out = Path(tmp) / "int8.onnx"
            Q.quantize_static(
                proto, out, Reader(), quant_format=getattr(Q.QuantFormat, formats[fmt]), per_channel=True,
                activation_type=Q.QuantType.QUInt8, weight_type=Q.QuantType.QInt8,
                calibrate_method=Q.CalibrationMethod.Percentile, reduce_range=bits == 7,
            )
            q = onnx.load(str(out))
        finally:
            quiet.setLevel(level)
    del q.metadata_props[:]  # the quantiser keeps none of them reliably: copy srkd's over
    for e in proto.metadata_props:
        q.metadata_props.add().CopyFrom(e)
    q.producer_name = "srkd"
    return q.SerializeToString()


def int8_onnx_bytes(model: nn.Module, calibration: Optional[Union[str, os.PathLike]] = None,
                    cache: bool = True, say=None, bits: Optional[str] = None) -> bytes:
    """The int8 graph of `model` (whose architecture has an int8 path), from the cache when it has been made before.

    `bits` (default $SRKD_INT8_WEIGHT_BITS, else auto) gives the weights 7 bits where this CPU's
    kernels would saturate 8 (`weight_bits`).
    """
    nbits = weight_bits(bits)
    folder, files = calibration_files(calibration)
    path = cache_dir() / f"{type(model).__name__.lower()}-x{model.scale}-{cache_key(model, files, folder, nbits)}.onnx"
    if cache and path.is_file():
        data, why = _read_cached(path, nbits)
        if why is None:
            return data
        # A damaged entry (a full disk, a crash mid-copy, an edit) would fail every later run: rebuilt in place.
        line = f"int8 cache: {path} is damaged ({why}); rebuilding it"
        if say:
            say(line)
        else:
            print(line, file=sys.stderr)
    if say:
        narrow = "; 7-bit weights: this CPU's int8 kernels saturate 8-bit ones (no VNNI)" if nbits == 7 else ""
        say(f"quantising {type(model).__name__} x{model.scale} to int8 (calibration: {RECIPE['crops']} crops from "
            f"{folder}; cached in {path.parent}{narrow})")
    data = quantize_bytes(model, calibration_crops(files, model.scale), bits=nbits)
    if cache:
        try:
            atomic_write(path, lambda p: p.write_bytes(data))
        except OSError:
            pass  # an unwritable cache costs a re-quantisation next time, nothing else
    return data


def _read_cached(path: Path, bits: int) -> Tuple[bytes, Optional[str]]:
    """(the cached graph at `path`, None) where it is whole: an ONNX model that checks, with the int8
    metadata of this recipe; else (b"", why not, in a few words)."""
    import onnx

    from .runtime.graph import META_KEY

    try:
        data = path.read_bytes()
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - protobuf and the checker raise many kinds; the cause is one
        text = str(e).strip().splitlines()
        return b"", _clip(text[0] if text else type(e).__name__)
    try:
        meta = json.loads(next((e.value for e in proto.metadata_props if e.key == META_KEY), "{}"))
    except ValueError:
        meta = {}
    made = meta.get("int8_recipe") if isinstance(meta, dict) else None
    if not isinstance(made, dict) or made.get("weight_bits") != bits:
        return b"", "no int8 metadata of this recipe"  # e.g. cut short before the metadata, the last field
    return data, None


def _clip(text: str, n: int = 100) -> str:
    return text if len(text) <= n else text[: n - 3].rstrip() + "..."


def int8_runner(model: nn.Module, threads: Optional[int] = None, say=None):
    """What `--precision int8` runs: the int8 graph in cache-sized pieces, one single-threaded
    session per thread (as the fp32 onnxruntime backend), or whole on one session with one thread."""
    data = int8_onnx_bytes(model, say=say)
    n = threads or torch.get_num_threads()
    if n > 1:
        return HaloTiles(OnnxModel(data, threads=1), model.scale, halo_radius(model), ORT_CPU_TILE, workers=n)
    return OnnxModel(data, threads=1)


__all__ = ["CALIBRATION_ENV", "INT8_TOLERANCE", "RECIPE", "WEIGHT_BITS", "WEIGHT_BITS_ENV", "cache_dir",
           "calibration_crops", "calibration_files", "int8_difference", "int8_onnx_bytes",
           "int8_runner", "quantize_bytes", "recipe", "require_quantization", "supports_int8", "u8s8_saturates",
           "weight_bits", "weights_sha256"]
