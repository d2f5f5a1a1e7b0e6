"""Exporting a model to ONNX or TorchScript, checked against PyTorch before the file appears.

Both formats take any batch size and any height and width. The graph is traced on an input
whose sides are *not* multiples of the model's window (`trace_example`), so SwinIR's padding
branch is recorded, with pad amounts computed from the input's shape; its shifted-window
mask is built from the shape inside the graph too. Every export is then run on two input
sizes, one of them a multiple of the window, and must match the PyTorch output to 1e-4 (max
abs) before it is written, atomically, with srkd metadata (arch, scale, config) inside.

ONNX needs onnx and onnxruntime, core dependencies wherever they publish wheels (pyproject.toml).
`int8=True` writes SqueezeSR quantised for onnxruntime (`quantize.py`), checked against the fp32
model to `INT8_TOLERANCE` instead.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from .atomic import atomic_write
from .errors import ConfigError, OutputError

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17
TOLERANCE = 1e-4
# int8 vs fp32, mean |difference| in grey levels (of 255) on natural images: int8 is approximate.
# Measured 0.7-1.1 (uint8 outputs) on Set5 for the bundled x2-x4 models (tests/test_int8.py, docs/performance.md).
INT8_TOLERANCE = 1.5
META_KEY = "srkd"


@dataclass
class ExportResult:
    path: Path
    format: str
    arch: str
    scale: int
    max_abs_diff: float  # exported vs PyTorch, over the check inputs
    bytes: int


def _window(model: nn.Module) -> int:
    return int(getattr(model, "window_size", 1) or 1)


def trace_example(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A small input whose height and width are not multiples of the model's window (see module doc)."""
    ws = _window(model)
    h, w = (2 * ws + 3, 2 * ws + 5) if ws > 1 else (19, 23)
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, h, w, generator=g)


def _check_inputs(model: nn.Module) -> Tuple[torch.Tensor, ...]:
    ws = _window(model)
    g = torch.Generator().manual_seed(1)
    return trace_example(model), torch.rand(2, 3, 3 * ws if ws > 1 else 24, 4 * ws if ws > 1 else 17, generator=g)


def _metadata(model: nn.Module, meta: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """What an export records: scale, window, what the model says of its own output
    (`export_metadata`, e.g. `archs.fuse.Subpixel`), and `meta`."""
    return {"scale": int(model.scale), "window": _window(model), **getattr(model, "export_metadata", {}), **(meta or {})}


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export needs onnx and onnxruntime, which are not installed (no wheel for this "
                          "platform?): pip install onnx onnxruntime") from None


def onnx_bytes(model: nn.Module, meta: Optional[Dict[str, Any]] = None, opset: int = DEFAULT_OPSET,
               symbolic_shapes: bool = True) -> bytes:
    """`model` as a serialized ONNX graph with dynamic N, H, W and srkd metadata (and, for conv
    nets, symbolic shapes: see `_with_symbolic_shapes`)."""
    _require_onnx()
    import onnx

    if opset < 17:
        raise ConfigError(f"--opset {opset}: srkd exports need opset 17 or newer (LayerNorm)")
    model = model.eval().cpu()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter: the dynamo one needs onnxscript, which srkd does not depend on.
        # Its warnings are about traced Python conditions, which the checks after export cover.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (trace_example(model),), buf, dynamo=False, opset_version=opset,
            input_names=["lr"], output_names=["sr"], do_constant_folding=True,
            dynamic_axes={"lr": {0: "batch", 2: "height", 3: "width"}, "sr": {0: "batch", 2: "out_height", 3: "out_width"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    if symbolic_shapes and _window(model) == 1:
        proto = _with_symbolic_shapes(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(_metadata(model, meta), sort_keys=True)
    proto.producer_name = "srkd"
    return proto.SerializeToString()


def _with_symbolic_shapes(proto):
    """The graph with symbolic shapes on every tensor (`height`, `width`, ...), where they can be inferred.

    With them onnxruntime can prove that an Add's two inputs have one shape and fold the Add
    into the convolution before it (its NCHWc Conv + Sum fusion); in a graph whose sizes are
    unknown, every Add stays a pass of its own over memory (SqueezeSR: 6 % slower). Only for
    conv nets: SwinIR's window padding defeats the symbolic arithmetic. Graphs of convolutions
    and element-wise ops (SqueezeSR) are annotated here directly; others
    go through onnxruntime's symbolic shape inference, whose sympy import alone takes ~0.5 s.
    """
    shapes = _conv_net_shapes(proto.graph)
    if shapes is not None:
        _annotate(proto.graph, shapes)
        return proto
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    except Exception:  # an optimisation only: the graph without shapes runs the same
        return proto


_ELEMENTWISE = {"Relu", "Add", "Sub", "Mul", "Div", "Sigmoid", "Clip", "LeakyRelu", "Identity"}


def _conv_net_shapes(graph) -> Optional[Dict[str, list]]:
    """Each tensor's dims (ints or symbol names) for a graph of 4-D float tensors built only from
    (ungrouped, undilated) Convs, element-wise ops (with constants), channel Concat and
    DepthToSpace; None otherwise."""
    from onnx import helper

    inits = {t.name: t for t in graph.initializer}
    consts = set(inits)
    if len(graph.input) != 1:
        return None
    dims = graph.input[0].type.tensor_type.shape.dim
    shapes: Dict[str, list] = {graph.input[0].name: [d.dim_param or d.dim_value for d in dims]}
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins = [shapes.get(i) for i in node.input if i and i not in consts]
        if node.op_type == "Constant" or (node.op_type == "Identity" and node.input[0] in consts):
            consts.update(node.output)  # the exporter aliases shared initializers through Identity
            if node.input and node.input[0] in inits:
                inits[node.output[0]] = inits[node.input[0]]
            continue
        if len(node.output) != 1 or any(i is None for i in ins) or not ins:
            return None
        x = ins[0]
        if node.op_type == "Conv":
            w = inits.get(node.input[1])
            if w is None or len(w.dims) != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                return None
            k = list(w.dims[2:])
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if any(v != 1 for v in attrs.get("dilations", [1, 1])) or int(attrs.get("group", 1)) != 1:
                return None
            strides = list(attrs.get("strides", [1, 1]))
            spatial = [_conv_dim(x[2 + i], k[i], pads[i] + pads[i + 2], strides[i]) for i in range(2)]
            shapes[node.output[0]] = [x[0], int(w.dims[0])] + spatial
        elif node.op_type in _ELEMENTWISE:
            if any(i != x for i in ins):
                return None
            shapes[node.output[0]] = x
        elif node.op_type == "Concat" and attrs.get("axis") == 1:
            if any(i[:1] + i[2:] != x[:1] + x[2:] for i in ins) or not all(isinstance(i[1], int) for i in ins):
                return None
            shapes[node.output[0]] = [x[0], sum(i[1] for i in ins), x[2], x[3]]
        elif node.op_type == "DepthToSpace":
            b = int(attrs["blocksize"])
            if not isinstance(x[1], int):
                return None
            shapes[node.output[0]] = [x[0], x[1] // (b * b)] + [d * b if isinstance(d, int) else f"{d}*{b}" for d in x[2:]]
        else:
            return None
    return shapes


def _conv_dim(d, k: int, pad: int, stride: int):
    """A conv's output size along one axis, for a size that is an int or a symbol name."""
    if isinstance(d, int):
        return (d + pad - k) // stride + 1
    if stride == 1 and pad == k - 1:
        return d
    off = pad - k
    return f"({d}{off:+d})//{stride}+1" if off else f"{d}//{stride}+1"


def _annotate(graph, shapes: Dict[str, list]) -> None:
    from onnx import TensorProto, helper

    outputs = {o.name for o in graph.output}
    del graph.value_info[:]
    for name, dims in shapes.items():
        if name == graph.input[0].name or name in outputs:
            continue
        graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    for out in graph.output:
        if out.name in shapes:
            out.CopyFrom(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, shapes[out.name]))


def torchscript_module(model: nn.Module) -> torch.jit.ScriptModule:
    """`model` traced (not frozen, so it can still move between devices)."""
    model = model.eval().cpu()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, trace_example(model), check_trace=False)


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
    from .backends import OnnxModel

    path = Path(path)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: choose {' or '.join(FORMATS)}")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name, e.g. {path / ('model.' + ('onnx' if fmt == 'onnx' else 'pt'))}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists (use --overwrite to replace it)")
    model = model.eval().cpu()
    meta = _metadata(model, meta)
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
                overwrite: bool = True) -> ExportResult:
    """Write the int8 graph of a SqueezeSR `model` (`quantize.int8_onnx_bytes`, cached) to `path`,
    after checking it is within INT8_TOLERANCE grey levels of the fp32 model on natural crops.

    `max_abs_diff` in the result is that mean |difference| in grey levels, not a max.
    """
    import onnx

    from .backends import OnnxModel
    from .quantize import calibration_crops, calibration_files, check_int8, int8_onnx_bytes

    path = Path(path)
    check_int8(model)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name, e.g. {path / 'model-int8.onnx'}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists (use --overwrite to replace it)")
    model = model.eval().cpu()
    proto = onnx.load_from_string(int8_onnx_bytes(model))
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


def int8_difference(model: nn.Module, runner, inputs) -> float:
    """Mean |int8 - fp32| in grey levels (outputs clamped to [0,1], x255) over `inputs`."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x in inputs:
            ref, got = model(x).clamp(0, 1), runner(x).clamp(0, 1)
            total += float((got - ref).abs().sum()) * 255
            count += ref.numel()
    return total / max(1, count)


def export(
    name: str,
    output: Union[str, os.PathLike],
    fmt: str = "onnx",
    scale: Optional[int] = None,
    opset: int = DEFAULT_OPSET,
    fuse: bool = False,
    overwrite: bool = True,
    int8: bool = False,
) -> ExportResult:
    """Export a zoo model or weights file (`name`) to `output`.

    `fuse` exports SqueezeSR re-arranged for the format's runtime (archs/fuse.py): for ONNX
    the split residual stream, for TorchScript the merged expands. Same outputs, faster.
    `int8`: SqueezeSR quantised for onnxruntime (`export_int8`).
    """
    from .archs.fuse import reparameterize, split_stream
    from .loader import load_model

    if int8 and fmt != "onnx":
        raise ConfigError(f"--int8 writes ONNX for onnxruntime, not {fmt}; use --format onnx")
    lm = load_model(name, scale=scale, device="cpu")
    if int8:
        meta = {"arch": lm.spec.name, "config": lm.config, "source": str(lm.metadata.get("zoo_name") or lm.path or name)}
        return export_int8(lm.model, output, meta=meta, overwrite=overwrite)
    model = (split_stream if fmt == "onnx" else reparameterize)(lm.model) if fuse else lm.model
    meta = {
        "arch": lm.spec.name,
        "config": lm.config,
        "source": str(lm.metadata.get("zoo_name") or lm.path or name),
        "fused": bool(fuse and model is not lm.model),
    }
    return export_model(model, output, fmt, meta=meta, opset=opset, overwrite=overwrite)


__all__ = ["DEFAULT_OPSET", "ExportResult", "FORMATS", "INT8_TOLERANCE", "TOLERANCE", "export", "export_int8", "export_model",
           "int8_difference", "onnx_bytes",
           "torchscript_module", "trace_example"]
