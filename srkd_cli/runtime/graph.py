"""A torch model as a graph, in memory: serialized ONNX (for onnxruntime) or traced TorchScript.

Both take any batch size and any height and width. The graph is traced on an input whose sides
are *not* multiples of the model's window (`trace_example`), so SwinIR's padding branch is
recorded, with pad amounts computed from the input's shape; its shifted-window mask is built
from the shape inside the graph too. `export.py` writes these graphs to files; `backends.py`
runs them.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .onnx_shapes import with_symbolic_shapes

DEFAULT_OPSET = 17
try:  # the newest opset this torch's exporter writes (23 in torch 2.13)
    from torch.onnx._constants import ONNX_MAX_OPSET as MAX_OPSET
except ImportError:  # pragma: no cover - a torch that moved it: the oldest bound it has had
    MAX_OPSET = 20
META_KEY = "srkd"  # ONNX metadata_props key / TorchScript extra file holding arch, scale, config


def window(model: nn.Module) -> int:
    return int(getattr(model, "window_size", 1) or 1)


def trace_example(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A small input whose height and width are not multiples of the model's window (see module doc)."""
    ws = window(model)
    h, w = (2 * ws + 3, 2 * ws + 5) if ws > 1 else (19, 23)
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, h, w, generator=g)


def graph_metadata(model: nn.Module, meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What a graph records: scale, window, what the model says of its own output
    (`export_metadata`, e.g. `archs.squeezesr_fused.Subpixel`), and `meta`."""
    return {"scale": int(model.scale), "window": window(model), **getattr(model, "export_metadata", {}), **(meta or {})}


def require_onnx() -> None:
    """A one-line ConfigError unless onnx and onnxruntime (what an in-memory export needs) import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export needs onnx and onnxruntime, which are not installed (no wheel for this "
                          "platform?): pip install onnx onnxruntime") from None


def check_opset(opset: int) -> None:
    """One line for an opset srkd cannot export: below 17 (LayerNorm), or past this torch's exporter."""
    if not DEFAULT_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"--opset {opset}: srkd exports opset {DEFAULT_OPSET} to {MAX_OPSET} "
                          f"(17 for LayerNorm; {MAX_OPSET} is the newest this torch writes)")


def onnx_bytes(model: nn.Module, meta: Optional[Dict[str, Any]] = None, opset: int = DEFAULT_OPSET,
               symbolic_shapes: bool = True) -> bytes:
    """`model` as a serialized ONNX graph with dynamic N, H, W and srkd metadata (and, for conv
    nets, symbolic shapes: see `onnx_shapes.with_symbolic_shapes`)."""
    require_onnx()
    import onnx

    check_opset(opset)
    model = model.eval().cpu()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter: the dynamo one needs onnxscript, which srkd does not depend on.
        # Its warnings are about traced Python conditions, which export.py's checks cover.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (trace_example(model),), buf, dynamo=False, opset_version=opset,
            input_names=["lr"], output_names=["sr"], do_constant_folding=True,
            dynamic_axes={"lr": {0: "batch", 2: "height", 3: "width"}, "sr": {0: "batch", 2: "out_height", 3: "out_width"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    if symbolic_shapes and window(model) == 1:
        proto = with_symbolic_shapes(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(graph_metadata(model, meta), sort_keys=True)
    proto.producer_name = "srkd"
    return proto.SerializeToString()


def torchscript_module(model: nn.Module, example: Optional[torch.Tensor] = None) -> torch.jit.ScriptModule:
    """`model` traced on `example` (default: `trace_example`, on the CPU); not frozen, so it can
    still move between devices."""
    if example is None:
        model = model.eval().cpu()
        example = trace_example(model)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # traced Python conditions: see the module doc for why they hold
        return torch.jit.trace(model.eval(), example, check_trace=False)


class TracedModel(nn.Module):
    """A TorchScript module with the `.scale` the Upscaler reads."""

    def __init__(self, module: torch.jit.ScriptModule, scale: int):
        super().__init__()
        self.module, self.scale = module, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "META_KEY", "TracedModel", "check_opset", "graph_metadata", "onnx_bytes",
           "require_onnx", "torchscript_module", "trace_example", "window"]
