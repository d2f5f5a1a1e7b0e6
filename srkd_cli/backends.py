"""Other runtimes behind the torch model's interface, so `Upscaler` can drive them unchanged.

`OnnxModel` runs an ONNX file (or an in-memory export of a torch model) with onnxruntime and
quacks like an `SRModel` for inference: `.scale`, `.eval()`, `.to(device)`, and a call that
takes and returns (N,3,h,w) float tensors. `prepare(model, backend)` turns a loaded torch
model into the callable a backend runs; `srkd bench` and `srkd upscale --backend` use it.

onnxruntime is a core dependency where it publishes wheels (pyproject.toml); on a platform
without it, `--backend auto` falls back to torch-opt with one line saying so (`FALLBACK_NOTE`),
and asking for onnxruntime by name is a ConfigError that says so. `prepare(..., precision="int8")`
runs SqueezeSR quantised (`quantize.py`).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .errors import CheckpointError, ConfigError, InputError

BACKENDS = ("torch", "torch-opt", "onnxruntime", "torchscript", "compile")
BACKEND_HELP = {
    "torch": "eager PyTorch as loaded (inference mode, NCHW, float32)",
    "torch-opt": "eager PyTorch, re-parameterised (SqueezeSR), channels_last, cache-sized tiles (SqueezeSR)",
    "onnxruntime": "exported to ONNX (SqueezeSR re-arranged for it), run by onnxruntime; on the CPU, SqueezeSR "
                   "in cache-sized pieces, one single-threaded session per thread",
    "torchscript": "traced, frozen and optimize_for_inference'd TorchScript",
    "compile": "torch.compile (inductor, freezing) of the torch-opt model without tiles; compiles on the first call",
}
META_KEY = "srkd"  # ONNX metadata_props key / TorchScript extra file holding arch, scale, config


def _require_onnxruntime():
    try:
        import onnxruntime  # noqa: F401
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

    `source` is a path to a .onnx file or the serialized model bytes. `threads` sets
    onnxruntime's intra-op threads (default: torch's current thread count, so `--threads` acts
    on both). The model's scale comes from the file's srkd metadata, else from `scale`.
    """

    def __init__(self, source: Union[str, os.PathLike, bytes], device: Union[str, torch.device] = "cpu",
                 threads: Optional[int] = None, scale: Optional[int] = None):
        ort = _require_onnxruntime()
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
        # A graph that stops before its pixel shuffle (archs.fuse.Subpixel) says so in its metadata,
        # and whether its tail computes column pairs (archs.fuse.unpair_columns).
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
        from .export import onnx_bytes

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
        from .archs.fuse import unpair_columns

        y = self.run_raw(x)
        return unpair_columns(y, x.shape[-1], self.scale, self.column_pairs) if self.subpixel_output else y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.run_raw(x)
        if not self.subpixel_output:
            return y
        from .archs.fuse import shuffle_into, shuffle_pairs_into

        n, _, h, w = x.shape
        out = y.new_empty(n, y.shape[1] // (self.scale * self.scale * self.column_pairs), h * self.scale, w * self.scale)
        if self.column_pairs == 2:
            shuffle_pairs_into(out, y, 0, self.scale)
        else:
            shuffle_into(out, y, self.scale)
        return out

    forward = __call__


class TracedModel(nn.Module):
    """A TorchScript module with the `.scale` the Upscaler reads."""

    def __init__(self, module: torch.jit.ScriptModule, scale: int):
        super().__init__()
        self.module, self.scale = module, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the C heap for reuse (glibc only); True if it took effect.

    glibc serves every allocation over 32 MB (one 64-channel activation of a 512x512 image
    is 64 MB) with a fresh mmap and unmaps it on free, so each such tensor is page-faulted in
    anew on every forward: measured at up to half of SqueezeSR's CPU time (docs/performance.md).
    With mmap off and trimming out of reach, freed blocks are reused instead. The cost: the
    process keeps its peak memory until it exits, which suits a command-line run.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
            return False  # not glibc (musl has no mallopt)
        m_trim_threshold, m_mmap_max = -1, -4
        ok = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except OSError:
        return False
    global _ALLOCATOR_TUNED
    _ALLOCATOR_TUNED = _ALLOCATOR_TUNED or ok
    return ok


_ALLOCATOR_TUNED = False


class HaloTiles(nn.Module):
    """Runs `inner` on pieces of the input, each with a `halo` of context, exactly; optionally in parallel.

    With `halo` = the model's receptive radius (archs/fuse.py), every output pixel sees the
    same inputs as in one whole-image call, so the result is the same to float rounding;
    nothing is blended (unlike the Upscaler's tiles, which exist to bound memory). Pieces are
    `tile` = (height, width) input pixels, or one strip per worker. Two reasons to cut: cache locality (one 64-channel
    activation of a 512x512 image is 64 MB, streamed through DRAM by every op; a 128x128
    piece's activations stay in the caches), and `workers` > 1: pieces run concurrently, each
    on one thread, which on a 2-core CPU beats two threads sharing every op. Only for inner
    runners that release the GIL and are safe to call concurrently (onnxruntime sessions are).
    An inner runner with `subpixel_output` (OnnxModel of an `archs.fuse.Subpixel` graph) returns
    its (N, 3*s*s, h, w) result through `run_subpixel` (or, with `column_pairs` 2, its raw
    output through `run_raw`), and the pixel shuffle happens in the copy.
    """

    def __init__(self, inner, scale: int, halo: int, tile: Optional[Tuple[int, int]] = None, workers: int = 1):
        super().__init__()
        self.inner, self.scale, self.halo = inner, int(scale), int(halo)
        self.tile = None if tile is None else (int(tile[0]), int(tile[1]))
        self.workers = max(1, int(workers))
        self._pool = None

    def pieces(self, hh: int, ww: int) -> List[Tuple[int, int, int, int]]:
        """(y0, x0, y1, x1) of each piece; without a tile, one full-width strip per worker.

        `tile` is an upper bound: the image is cut into as few pieces as it allows, of equal
        size (to a pixel), so no thin remainder pays a whole halo for a few rows.
        """
        th, tw = self.tile or (-(-hh // self.workers), ww)
        th, tw = -(-hh // -(-hh // th)), -(-ww // -(-ww // tw))
        return [(y0, x0, min(y0 + th, hh), min(x0 + tw, ww)) for y0 in range(0, hh, th) for x0 in range(0, ww, tw)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        s, r = self.scale, self.halo
        pieces = self.pieces(hh, ww)
        if len(pieces) == 1:
            return self.inner(x)
        out = x.new_empty(n, c, hh * s, ww * s)
        subpixel = bool(getattr(self.inner, "subpixel_output", False))
        pairs = subpixel and getattr(self.inner, "column_pairs", 1) == 2
        from .archs.fuse import shuffle_into, shuffle_pairs_into

        # Grad and inference modes are per thread: workers take the caller's.
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def run(piece: Tuple[int, int, int, int]) -> None:
            y0, x0, y1, x1 = piece
            a, b = max(0, y0 - r), max(0, x0 - r)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                piece_in = x[:, :, a:min(hh, y1 + r), b:min(ww, x1 + r)]
                dst = out[:, :, y0 * s:y1 * s, x0 * s:x1 * s]
                if pairs:  # shuffle while copying into place: one pass over the output, not two
                    shuffle_pairs_into(dst, self.inner.run_raw(piece_in)[:, :, y0 - a:y1 - a], x0 - b, s)
                elif subpixel:
                    shuffle_into(dst, self.inner.run_subpixel(piece_in)[:, :, y0 - a:y1 - a, x0 - b:x1 - b], s)
                else:
                    y = self.inner(piece_in)
                    dst.copy_(y[:, :, (y0 - a) * s:(y1 - a) * s, (x0 - b) * s:(x1 - b) * s])

        if self.workers > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="srkd-tile")
            list(self._pool.map(run, pieces))
        else:
            for p in pieces:
                run(p)
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pool"] = None  # thread pools do not pickle (or deep-copy)
        return state


# Input pixels: measured best of 64/96/128/192/256 on a 2-core EPYC (docs/performance.md).
CPU_TILE = 128
# onnxruntime's pieces (height, width bounds; HaloTiles evens them out): small enough that two
# workers' activations stay in the caches, large enough that the halo adds ~14 % work, not more.
# Measured against whole strips and 128..256-pixel pieces in docs/performance.md.
ORT_CPU_TILE = (144, 176)


def optimize(model: nn.Module, device: Union[str, torch.device] = "cpu", tile: Union[int, str, None] = "auto") -> nn.Module:
    """The fastest eager form of `model` on `device`, computing the same function (to ~1e-6).

    SqueezeSR is re-parameterised (archs/fuse.py) and, on the CPU, runs in cache-sized tiles
    (`HaloTiles`; `tile="auto"`: CPU_TILE, or whole images once `tune_cpu_allocator` has run,
    which measured faster); every conv net gets channels_last weights, which oneDNN runs
    faster on the CPU than NCHW. The original model is not modified.
    """
    if tile == "auto":
        tile = None if _ALLOCATOR_TUNED else CPU_TILE
    from .archs.fuse import receptive_radius, reparameterize
    from .archs.squeezesr import SqueezeSR

    device = torch.device(device)
    if isinstance(model, SqueezeSR):
        fused = reparameterize(model, channels_last=True).to(device)
        if device.type == "cpu" and tile:
            return HaloTiles(fused, model.scale, receptive_radius(model), (tile, tile)).eval()
        return fused
    return copy.deepcopy(model).to(device, memory_format=torch.channels_last).eval()


ONNX_GRAPHS = ("plain", "fused", "split")


def onnx_runner(model: nn.Module, device: Union[str, torch.device] = "cpu", threads: Optional[int] = None,
                graph: str = "split", pieces: bool = True):
    """The fastest onnxruntime form of `model`: what `--backend onnxruntime` runs.

    The model is exported in memory, SqueezeSR in the form `graph` names: "split" (default,
    `archs.fuse.split_stream`), "fused" (`reparameterize`) or "plain". On the CPU with more than
    one thread, a model with a small receptive field (SqueezeSR) runs in cache-sized pieces
    (`ORT_CPU_TILE`), spread over one single-threaded session per thread (`HaloTiles` with
    `workers`), when `pieces`; anything else runs whole on one session with `threads` intra-op threads.
    """
    from .archs.fuse import SplitSqueezeSR, Subpixel, receptive_radius, reparameterize, split_stream

    if graph not in ONNX_GRAPHS:
        raise ConfigError(f"graph {graph!r}: choose one of {', '.join(ONNX_GRAPHS)}")
    device = torch.device(device)
    n = threads or torch.get_num_threads()
    radius = receptive_radius(model)
    form = {"plain": lambda m: m, "fused": reparameterize, "split": lambda m: split_stream(m, pair_columns=None)}[graph]
    src = copy.deepcopy(form(model)).cpu().eval()
    if isinstance(src, SplitSqueezeSR):  # the pixel shuffle is done by OnnxModel, or by HaloTiles as it copies
        src = Subpixel(src)
    if pieces and device.type == "cpu" and radius is not None and n > 1:
        return HaloTiles(OnnxModel.from_torch(src, threads=1), model.scale, radius, ORT_CPU_TILE, workers=n)
    return OnnxModel.from_torch(src, device=device, threads=n)


FALLBACK_NOTE = ("onnxruntime is not installed (no wheel for this platform?): running SqueezeSR on torch-opt, "
                 "about 2x slower (pip install onnx onnxruntime)")
PRECISION_CHOICES = ("fp32", "fp16", "bf16", "int8")


def pick_backend(model: nn.Module, device: Union[str, torch.device] = "cpu", precision: str = "fp32",
                 note=None) -> str:
    """What `--backend auto` runs: the fastest backend measured for `model` that computes the same function.

    On the CPU in fp32 (or int8), SqueezeSR (a small receptive field, so exact pieces pay) runs on
    onnxruntime when it is installed, else `torch-opt` (docs/performance.md: 1.5x vs 3x its
    floor, against 9.4x for plain eager), and `note(FALLBACK_NOTE)` says so. Everything else,
    and every GPU, runs `torch`.
    """
    from .archs.fuse import receptive_radius
    from .export import _require_onnx

    if torch.device(device).type != "cpu" or precision not in ("fp32", "int8") or receptive_radius(model) is None:
        return "torch"
    if precision == "int8":
        return "onnxruntime"  # the only int8 path; prepare() says what is missing if anything is
    try:
        _require_onnx()  # what exporting in memory needs
    except ConfigError:
        if note is not None:
            note(FALLBACK_NOTE)
        return "torch-opt"
    return "onnxruntime"


def prepare(model: nn.Module, backend: str = "torch", device: Union[str, torch.device] = "cpu",
            example: Optional[torch.Tensor] = None, threads: Optional[int] = None, precision: str = "fp32", say=None):
    """The callable that runs `model` on `backend`; it has `.scale` and maps (N,3,h,w) -> (N,3,sh,sw).

    `example` (an input of the size that will be run) lets the torchscript backend trace;
    the other backends do not need it. `precision` "int8" (onnxruntime, SqueezeSR, CPU only)
    runs the quantised graph (`quantize.int8_runner`; `say` hears when it is being made);
    other precisions are the Upscaler's business, not the backend's.
    """
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if precision == "int8":
        from .quantize import check_int8, int8_runner

        check_int8(model, backend, device)
        return int8_runner(model.eval().cpu(), device, threads, say=say)
    model = model.eval().to(device)
    if backend == "torch":
        return model
    if backend == "torch-opt":
        return optimize(model, device)
    if backend == "onnxruntime":
        return onnx_runner(model, device, threads)
    if backend == "torchscript":
        from .export import trace_example

        ex = trace_example(model) if example is None else example
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # traced Python conditions: export.py explains why they hold
            traced = torch.jit.trace(model, ex.to(device), check_trace=False)
            frozen = torch.jit.freeze(traced)
            if device.type == "cpu":
                frozen = torch.jit.optimize_for_inference(frozen)
        return TracedModel(frozen, model.scale)
    # compile: inductor needs a C++ compiler on the CPU; a missing one surfaces on the first call.
    # Freezing lets it pre-pack conv weights and fuse ReLU/add into oneDNN convs.
    compiled = torch.compile(optimize(model, device, tile=None), dynamic=False, options={"freezing": True})
    compiled.scale = model.scale
    return compiled


__all__ = ["BACKENDS", "BACKEND_HELP", "CPU_TILE", "FALLBACK_NOTE", "HaloTiles", "PRECISION_CHOICES", "OnnxModel", "TracedModel", "ONNX_GRAPHS", "onnx_runner", "optimize",
           "pick_backend", "prepare"]
