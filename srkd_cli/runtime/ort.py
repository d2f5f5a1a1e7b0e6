"""onnxruntime behind the torch model's interface, so `Upscaler` and `HaloTiles` drive it unchanged.

onnxruntime is a core dependency where it publishes wheels (pyproject.toml); where it is
missing, making an `OnnxModel` is a ConfigError that says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, InputError
from .graph import META_KEY, onnx_bytes
from .shuffle import shuffle_into, shuffle_pairs_into, unpair_columns


def require_onnxruntime():
    """The onnxruntime module, or a one-line ConfigError saying how to get it."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("the onnxruntime backend needs onnxruntime, which is not installed (it has no wheel for "
                          "some platforms): pip install onnxruntime, or use --backend torch-opt") from None
    return onnxruntime


def _providers(ort, device: torch.device):
    have = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in have:
            raise ConfigError(
                "--backend onnxruntime on --device cuda needs onnxruntime-gpu (this onnxruntime has only "
                f"{', '.join(have)}); use --device cpu")
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    if device.type != "cpu":
        raise ConfigError(f"--backend onnxruntime runs on cpu or cuda, not {device.type}")
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An ONNX super-resolution model run by onnxruntime, callable like the torch model.

    It quacks like an `SRModel` for inference: `.scale`, `.eval()`, `.to(device)`, and a call
    that takes and returns (N,3,h,w) float tensors. `source` is a path to a .onnx file or the
    serialized model bytes. `threads` sets onnxruntime's intra-op threads (default: torch's
    current thread count, so `--threads` acts on both). The model's scale comes from the file's
    srkd metadata, else from `scale`.
    """

    def __init__(self, source: Union[str, os.PathLike, bytes], device: Union[str, torch.device] = "cpu",
                 threads: Optional[int] = None, scale: Optional[int] = None):
        ort = require_onnxruntime()
        self._ort = ort
        self._source = source
        self._threads = threads or torch.get_num_threads()
        self.path: Optional[Path] = None
        if not isinstance(source, (bytes, bytearray)):
            self.path = Path(source)
            if not self.path.is_file():
                raise InputError(f"{self.path}: no such ONNX file")
        self.device = torch.device(device)
        self._session = self._make_session(self.device)
        meta = self._session.get_modelmeta().custom_metadata_map
        self.metadata: Dict[str, Any] = json.loads(meta[META_KEY]) if META_KEY in meta else {}
        self.scale = int(self.metadata.get("scale") or scale or 0)
        if not self.scale:
            raise CheckpointError(f"{self.path or 'ONNX model'}: no srkd metadata says its scale; pass scale=")
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise CheckpointError(f"{self.path or 'ONNX model'}: expected one (N,3,H,W) input, got {[i.shape for i in inputs]}")
        self._input = inputs[0].name
        # A graph that stops before its pixel shuffle (archs.squeezesr_fused.Subpixel) says so in its metadata,
        # and whether its tail computes column pairs (shuffle.unpair_columns).
        self.subpixel_output = bool(self.metadata.get("subpixel"))
        self.column_pairs = int(self.metadata.get("column_pairs", 1))

    def _make_session(self, device: torch.device):
        ort = self._ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self._threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        src = bytes(self._source) if isinstance(self._source, (bytes, bytearray)) else str(self._source)
        try:
            return ort.InferenceSession(src, so, providers=_providers(ort, device))
        except ConfigError:
            raise
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise CheckpointError(f"{self.path or 'ONNX model'}: onnxruntime cannot load it ({str(e).splitlines()[0][:160]})") from None

    @classmethod
    def from_torch(cls, model: nn.Module, device: Union[str, torch.device] = "cpu", threads: Optional[int] = None,
                   meta: Optional[Dict[str, Any]] = None) -> "OnnxModel":
        """Export `model` to ONNX in memory (dynamic N, H, W) and load it."""
        return cls(onnx_bytes(model, meta=meta), device=device, threads=threads, scale=getattr(model, "scale", None))

    # --- the bits of nn.Module that Upscaler and bench use --------------------------------------
    def eval(self) -> "OnnxModel":
        return self

    def to(self, device: Union[str, torch.device, None] = None, *args: Any, **kwargs: Any) -> "OnnxModel":
        """Move to `device` (a new session when it changes); dtype and memory_format requests are ignored."""
        if isinstance(device, (str, torch.device)):
            dev = torch.device(device)
            if dev.type != self.device.type or (dev.index or 0) != (self.device.index or 0):
                self._session = self._make_session(dev)
                self.device = dev
        return self

    def run_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's output as it is (in column pairs where `column_pairs` is 2)."""
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (y,) = self._session.run(None, {self._input: arr})
        return torch.from_numpy(y).to(x.device)

    def run_subpixel(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3*s*s,h,w) before the pixel shuffle if `subpixel_output`, else the image."""
        y = self.run_raw(x)
        return unpair_columns(y, x.shape[-1], self.scale, self.column_pairs) if self.subpixel_output else y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.run_raw(x)
        if not self.subpixel_output:
            return y
        n, _, h, w = x.shape
        out = y.new_empty(n, y.shape[1] // (self.scale * self.scale * self.column_pairs), h * self.scale, w * self.scale)
        if self.column_pairs == 2:
            shuffle_pairs_into(out, y, 0, self.scale)
        else:
            shuffle_into(out, y, self.scale)
        return out

    forward = __call__


__all__ = ["OnnxModel", "require_onnxruntime"]
