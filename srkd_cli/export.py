"""Exporting a model to an ONNX or TorchScript file, checked against PyTorch before the file appears.

The graphs are made in memory by `runtime.graph` (any batch size, height and width). Every
export is then run on two input sizes, one of them a multiple of the window, and must match
the PyTorch output to 1e-4 (max abs) before it is written, atomically, with srkd metadata
(arch, scale, config) inside.

ONNX needs onnx and onnxruntime, core dependencies wherever they publish wheels (pyproject.toml).
`int8=True` writes a SqueezeSR, RepSR or Compact model quantised for onnxruntime (`quantize.py`), checked against the fp32
model to `INT8_TOLERANCE` instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from .archs import ARCHS
from .archs.squeezesr_fused import reparameterize, split_stream
from .atomic import atomic_write
from .backends import check_precision
from .config import or_list
from .errors import ConfigError, OutputError
from .loader import load_model
from .quantize import (INT8_TOLERANCE, calibration_crops, calibration_files, int8_difference, int8_onnx_bytes,
                       supports_int8)
from .runtime.graph import DEFAULT_OPSET, META_KEY, graph_metadata, onnx_bytes, torchscript_module, trace_example, window
from .runtime.ort import OnnxModel

FORMATS = ("onnx", "torchscript")
SUFFIX_FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript"}
TOLERANCE = 1e-4


@dataclass
class ExportResult:
    path: Path
    format: str
    arch: str
    scale: int
    max_abs_diff: float  # exported vs PyTorch, over the check inputs
    bytes: int


def format_for(path: Path, fmt: Optional[str] = None, int8: bool = False) -> str:
    """The format `path` is written in: `fmt` if given (refused when the file's suffix names another
    format), else the suffix's (.onnx, .pt), else ONNX. int8 files are ONNX."""
    by_suffix = SUFFIX_FORMATS.get(Path(path).suffix.lower())
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt}: choose {' or '.join(FORMATS)}")
        if by_suffix is not None and by_suffix != fmt:
            raise ConfigError(f"--format {fmt} and -o {path} disagree ({Path(path).suffix} is {by_suffix}); "
                              "drop --format or rename the file")
    fmt = fmt or by_suffix or "onnx"
    if int8 and fmt != "onnx":
        raise ConfigError(f"--int8 writes ONNX for onnxruntime, not {fmt}; name the file .onnx")
    return fmt


def _check_inputs(model: nn.Module) -> Tuple[torch.Tensor, ...]:
    ws = window(model)
    g = torch.Generator().manual_seed(1)
    shapes = (tuple(trace_example(model).shape), (2, 3, 3 * ws if ws > 1 else 24, 4 * ws if ws > 1 else 17))
    # Image-like inputs (noise at half size, upsampled): on pixel-wise noise some published models
    # leave their working range (the official BSRN gives outputs of +-400 there, and float32 rounding
    # alone, e.g. channels-last against contiguous, then moves them by units), so no export could match.
    return tuple(torch.nn.functional.interpolate(torch.rand(n, c, h // 2 + 1, w // 2 + 1, generator=g), size=(h, w),
                                                 mode="bilinear", align_corners=False) for n, c, h, w in shapes)


def _max_diff(model: nn.Module, run) -> float:
    worst = 0.0
    with torch.no_grad():
        for x in _check_inputs(model):
            ref = model(x)
            got = run(x)
            if got.shape != ref.shape:
                return float("inf")
            worst = max(worst, (got - ref).abs().max().item())
    return worst


def _atomic_write(path: Path, write) -> None:
    try:
        atomic_write(path, write)
    except OSError as e:
        raise OutputError(f"{path}: cannot write it ({e.strerror or e})") from None


def export_model(
    model: nn.Module,
    path: Union[str, os.PathLike],
    fmt: str = "onnx",
    meta: Optional[Dict[str, Any]] = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = True,
) -> ExportResult:
    """Export a torch SR model to `path`, after checking the export reproduces it to 1e-4."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: choose {' or '.join(FORMATS)}")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name, e.g. {path / ('model.' + ('onnx' if fmt == 'onnx' else 'pt'))}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists (use --overwrite to replace it)")
    model = model.eval().cpu()
    meta = graph_metadata(model, meta)
    if fmt == "onnx":
        data = onnx_bytes(model, meta, opset)
        runner = OnnxModel(data, device="cpu")
        diff = _max_diff(model, runner)
        write = lambda p: p.write_bytes(data)  # noqa: E731
    else:
        traced = torchscript_module(model)
        diff = _max_diff(model, traced)
        extra = {f"{META_KEY}.json": json.dumps(meta, sort_keys=True)}
        write = lambda p: torch.jit.save(traced, str(p), _extra_files=extra)  # noqa: E731
    if not diff <= TOLERANCE:
        raise OutputError(f"{path}: the {fmt} export differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}); not written")
    _atomic_write(path, write)
    return ExportResult(path, fmt, str(meta.get("arch", type(model).__name__)), int(model.scale), diff, path.stat().st_size)


def export_int8(model: nn.Module, path: Union[str, os.PathLike], meta: Optional[Dict[str, Any]] = None,
                overwrite: bool = True, bits: Optional[str] = None) -> ExportResult:
    """Write the int8 graph of `model` (`quantize.int8_onnx_bytes`, cached) to `path`, after
    checking it is within INT8_TOLERANCE grey levels of the fp32 model on natural crops.

    `bits` "7" makes a file that runs right on every x86 CPU (8-bit weights saturate the
    kernels of CPUs without VNNI); "auto" (default) suits the CPU that exports it.
    `max_abs_diff` in the result is that mean |difference| in grey levels, not a max.
    """
    path = Path(path)
    if not supports_int8(model):  # said in export's words: --precision is `srkd upscale`'s option
        archs = or_list([s.cls.__name__ for s in ARCHS.values() if s.int8])
        raise ConfigError(f"--int8: only {archs}-architecture models have an int8 form, not {type(model).__name__}; "
                          "export without --int8")
    check_precision(model, "onnxruntime", "cpu", "int8")  # what runs the file
    import onnx

    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name, e.g. {path / 'model-int8.onnx'}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists (use --overwrite to replace it)")
    model = model.eval().cpu()
    proto = onnx.load_from_string(int8_onnx_bytes(model, bits=bits))
    old = json.loads(next((e.value for e in proto.metadata_props if e.key == META_KEY), "{}"))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps({**old, **(meta or {})}, sort_keys=True)
    data = proto.SerializeToString()
    diff = int8_difference(model, OnnxModel(data, threads=1),
                           [torch.from_numpy(c) for c in calibration_crops(calibration_files()[1], model.scale, n=4, seed=1)])
    if not diff <= INT8_TOLERANCE:
        raise OutputError(f"{path}: the int8 export differs from fp32 by {diff:.2f} grey levels on average "
                          f"(> {INT8_TOLERANCE:g}); not written")
    _atomic_write(path, lambda p: p.write_bytes(data))
    arch = str((meta or {}).get("arch", type(model).__name__))
    return ExportResult(path, "onnx-int8", arch, int(model.scale), diff, path.stat().st_size)


def export(
    name: str,
    output: Union[str, os.PathLike],
    fmt: str = "onnx",
    scale: Optional[int] = None,
    opset: int = DEFAULT_OPSET,
    fuse: bool = False,
    overwrite: bool = True,
    int8: bool = False,
    weight_bits: Optional[str] = None,
) -> ExportResult:
    """Export a zoo model or weights file (`name`) to `output`.

    `fuse` exports SqueezeSR re-arranged for the format's runtime (archs/squeezesr_fused.py): for ONNX
    the split residual stream, for TorchScript the merged expands. Same outputs, faster.
    `int8`: quantised for onnxruntime where the architecture has an int8 form (`export_int8`, with `weight_bits`).
    """
    if int8 and fmt != "onnx":
        raise ConfigError(f"--int8 writes ONNX for onnxruntime, not {fmt}; use --format onnx")
    lm = load_model(name, scale=scale, device="cpu")
    if int8:
        meta = {"arch": lm.spec.name, "config": lm.config, "source": str(lm.metadata.get("zoo_name") or lm.path or name)}
        return export_int8(lm.model, output, meta=meta, overwrite=overwrite, bits=weight_bits)
    model = (split_stream if fmt == "onnx" else reparameterize)(lm.model) if fuse else lm.model
    meta = {
        "arch": lm.spec.name,
        "config": lm.config,
        "source": str(lm.metadata.get("zoo_name") or lm.path or name),
        "fused": bool(fuse and model is not lm.model),
    }
    return export_model(model, output, fmt, meta=meta, opset=opset, overwrite=overwrite)


__all__ = ["ExportResult", "FORMATS", "TOLERANCE", "export", "export_int8", "export_model", "format_for"]
