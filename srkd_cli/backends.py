"""The backend registry: every way srkd can run a model, one record each.

A `Backend` says what it is (`help`), how to build its runner from a loaded torch model
(`build`), which precisions its own graph runs, on which devices, how close to eager PyTorch
each comes (`Precision`), whether the Upscaler's fp16/bf16 autocast can run around it, whether
`srkd upscale` offers it, and what it needs installed. The CLI's choices and help texts, `srkd
bench`, `pick_backend` (`--backend auto`) and the tests all read `BACKENDS`.

`prepare(model, backend)` checks the request once (`check_precision`) and builds the callable;
it has `.scale` and maps (N,3,h,w) -> (N,3,sh,sw). The mechanisms live in `runtime/`; what
form of which architecture a backend runs comes from `archs.ArchSpec`.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .archs import ARCHS, halo_radius, spec_for
from .config import or_list
from .errors import ConfigError
from .inference import PRECISIONS
from .quantize import INT8_TOLERANCE, int8_runner, require_quantization, supports_int8
from .runtime.allocator import allocator_tuned
from .runtime.graph import TracedModel, require_onnx, torchscript_module, trace_example
from .runtime.ort import OnnxModel
from .runtime.tiles import CPU_TILE, ORT_CPU_TILE, HaloTiles

DEVICES = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class Precision:
    """How a backend's own graph runs at one precision."""

    devices: Tuple[str, ...] = DEVICES  # device types
    # exact: the same function as eager torch in fp32, to `tolerance` (max |difference|, images in
    # [0, 1]); approximate: `tolerance` bounds the mean |difference| in grey levels (quantize.int8_difference).
    exact: bool = True
    tolerance: float = 1e-5
    requires: Optional[Callable[[], None]] = None  # raises a one-line ConfigError if something is missing


@dataclass(frozen=True)
class Backend:
    name: str
    help: str
    # (model, device, example, threads, precision, say) -> the runner; `example` is an input of the
    # size that will be run (tracing), `say` hears about slow set-up (int8 calibration).
    build: Callable[..., Any]
    precisions: Mapping[str, Precision]  # fp32 first
    autocast: bool = False  # eager modules: the Upscaler's fp16/bf16 autocast runs around them
    in_upscale: bool = False  # offered by `srkd upscale` and `srkd eval`
    requires: Optional[Callable[[], None]] = None  # raises a one-line ConfigError if something is missing

    @property
    def devices(self) -> Tuple[str, ...]:
        return tuple(d for d in DEVICES if any(d in p.devices for p in self.precisions.values()))

    def available(self) -> bool:
        """Whether what it needs is installed."""
        try:
            if self.requires is not None:
                self.requires()
        except ConfigError:
            return False
        return True


# ----------------------------------------------------------------------------- builds


def optimize(model: nn.Module, device: Union[str, torch.device] = "cpu", tile: Union[int, str, None] = "auto") -> nn.Module:
    """The fastest eager form of `model` on `device`, computing the same function (to ~1e-6).

    An architecture with a re-parameterised form (`ArchSpec.fused_form`: SqueezeSR) runs it
    and, on the CPU with a small receptive field, in cache-sized tiles (`HaloTiles`; `tile="auto"`:
    CPU_TILE, or whole images once `tune_cpu_allocator` has run, which measured faster); other
    models get channels_last weights where their spec prefers it (conv nets: oneDNN runs them
    faster than NCHW; not SwinIR, whose attention reshapes undo it). The original model is not modified.
    """
    if tile == "auto":
        tile = None if allocator_tuned() else CPU_TILE
    device = torch.device(device)
    spec = spec_for(model)
    if spec is None or spec.fused_form is None:
        layout = torch.channels_last if spec is None or spec.channels_last else torch.contiguous_format
        return copy.deepcopy(model).to(device, memory_format=layout).eval()
    fused = spec.fused_form(model, True).to(device)
    radius = halo_radius(model)
    if device.type == "cpu" and tile and radius is not None:
        return HaloTiles(fused, model.scale, radius, (tile, tile)).eval()
    return fused


def onnx_runner(model: nn.Module, device: Union[str, torch.device] = "cpu", threads: Optional[int] = None):
    """The fastest onnxruntime form of `model`: what `--backend onnxruntime` runs in fp32.

    The model is exported in memory, in its architecture's graph form where it has one
    (`ArchSpec.graph_form`: SqueezeSR's split stream, without the pixel shuffle). On the CPU with
    more than one thread, a model with a small receptive field runs in cache-sized pieces
    (`ORT_CPU_TILE`), spread over one single-threaded session per thread (`HaloTiles` with
    `workers`); anything else runs whole on one session with `threads` intra-op threads.
    """
    device = torch.device(device)
    n = threads or torch.get_num_threads()
    spec = spec_for(model)
    src = copy.deepcopy(spec.graph_form(model) if spec is not None and spec.graph_form is not None else model).cpu().eval()
    radius = halo_radius(model)
    if device.type == "cpu" and radius is not None and n > 1:
        return HaloTiles(OnnxModel.from_torch(src, threads=1), model.scale, radius, ORT_CPU_TILE, workers=n)
    return OnnxModel.from_torch(src, device=device, threads=n)


def _build_torch(model, device, example, threads, precision, say):
    return model.eval().to(device)


def _build_torch_opt(model, device, example, threads, precision, say):
    return optimize(model.eval().to(device), device)


def _build_onnxruntime(model, device, example, threads, precision, say):
    if precision == "int8":
        return int8_runner(model.eval().cpu(), threads, say=say)
    return onnx_runner(model.eval().to(device), device, threads)


def _build_torchscript(model, device, example, threads, precision, say):
    model = model.eval().to(device)
    traced = torchscript_module(model, (trace_example(model) if example is None else example).to(device))
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(traced)
        if device.type == "cpu":
            frozen = torch.jit.optimize_for_inference(frozen)
    return TracedModel(frozen, model.scale)


def _build_compile(model, device, example, threads, precision, say):
    # Inductor needs a C++ compiler on the CPU; a missing one surfaces on the first call.
    # Freezing lets it pre-pack conv weights and fuse ReLU/add into oneDNN convs.
    model = model.eval().to(device)
    compiled = torch.compile(optimize(model, device, tile=None), dynamic=False, options={"freezing": True})
    compiled.scale = model.scale
    return compiled


# ----------------------------------------------------------------------------- the registry

# fp32 tolerances: torch-opt and torchscript only reorder sums (merged convs, folded biases; 1.4e-6
# measured); onnxruntime and inductor generate their own kernels, which differ more between CPUs.
BACKENDS: Dict[str, Backend] = {b.name: b for b in (
    Backend("torch", "eager PyTorch as loaded", _build_torch,
            {"fp32": Precision(tolerance=0.0)}, autocast=True, in_upscale=True),
    Backend("torch-opt", "eager, re-parameterised, channels_last, exact cache-sized tiles on the CPU", _build_torch_opt,
            {"fp32": Precision()}, autocast=True, in_upscale=True),
    Backend("onnxruntime", "exported in memory, exact cache-sized pieces on the CPU; int8 quantised", _build_onnxruntime,
            {"fp32": Precision(("cpu", "cuda"), tolerance=1e-4),
             "int8": Precision(("cpu",), exact=False, tolerance=INT8_TOLERANCE, requires=require_quantization)},
            in_upscale=True, requires=require_onnx),
    Backend("torchscript", "traced, frozen, optimize_for_inference'd", _build_torchscript, {"fp32": Precision()}),
    Backend("compile", "inductor-compiled torch-opt without tiles, weights frozen; compiles on the first call", _build_compile,
            {"fp32": Precision(tolerance=1e-4)}),
)}

# Every --precision: the Upscaler's (fp32 and the autocast ones), then those only backends' own graphs run.
PRECISION_CHOICES = tuple(dict.fromkeys([*PRECISIONS, *(p for b in BACKENDS.values() for p in b.precisions)]))
AUTOCAST = tuple(p for p in PRECISIONS if p != "fp32")


def backend_choices(upscale: bool = False) -> Tuple[str, ...]:
    """What --backend accepts: auto, then the registered names (those `srkd upscale` offers with `upscale`)."""
    return ("auto", *(b.name for b in BACKENDS.values() if b.in_upscale or not upscale))


def backend_help(upscale: bool = False) -> str:
    """--backend's help: each choice and what it is."""
    names = backend_choices(upscale)[1:]
    tol = ("%.0e" % max(BACKENDS[n].precisions["fp32"].tolerance for n in names)).replace("e-0", "e-")
    return ", ".join(["auto (the fastest for the model and device)"] + [f"{n} ({BACKENDS[n].help})" for n in names]) \
        + f"; in fp32 all give the same output to {tol}."


def check_backend(name: str, upscale: bool = False) -> str:
    """`name` if --backend takes it, else a one-line ConfigError listing the choices."""
    if name not in backend_choices(upscale):
        raise ConfigError(f"--backend {name}: choose {', '.join(backend_choices(upscale))}")
    return name


def get_backend(name: str) -> Backend:
    """The record of a registered backend ('auto' goes through `pick_backend` first)."""
    if name not in BACKENDS:
        raise ConfigError(f"--backend {name}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


# ----------------------------------------------------------------------------- checks and choice


def _lacks_path(model: nn.Module, precision: str) -> Optional[str]:
    """Why `model`'s architecture has no `precision` path (int8: `ArchSpec.int8`), or None."""
    if precision == "int8" and not supports_int8(model):
        archs = or_list([s.cls.__name__ for s in ARCHS.values() if s.int8])
        return (f"--precision int8: only {archs}-architecture models have an int8 path, "
                f"not {type(model).__name__}; use --precision fp32")
    return None


def incompatibility(model: nn.Module, backend: str, device: Union[str, torch.device], precision: str) -> Optional[str]:
    """Why `backend` cannot run `model` at `precision` on `device`, in one line; None if it can
    (what it needs installed aside: `check_precision` checks that too)."""
    b, dev = get_backend(backend), torch.device(device).type
    if precision not in PRECISION_CHOICES:
        return f"--precision {precision}: choose {', '.join(PRECISION_CHOICES)}"
    lacks = _lacks_path(model, precision)
    if lacks:
        return lacks
    if precision not in b.precisions and not (precision in AUTOCAST and b.autocast):
        able = [n for n, o in BACKENDS.items() if precision in o.precisions or (precision in AUTOCAST and o.autocast)]
        return f"--precision {precision} runs on --backend {or_list(able)} (or auto), not {b.name}"
    if dev not in b.devices:
        return f"--backend {b.name} runs on {or_list(b.devices)}, not {dev}"
    own = b.precisions.get(precision)
    if own is not None and dev not in own.devices:
        return f"--precision {precision} runs on {or_list(own.devices)} (--backend {b.name}), not {dev}; use --device {own.devices[0]}"
    return None


def check_precision(model: nn.Module, backend: str, device: Union[str, torch.device], precision: str) -> None:
    """A one-line ConfigError unless `backend` can run `model` at `precision` on `device` here."""
    why = incompatibility(model, backend, device, precision)
    if why:
        raise ConfigError(why)
    b = BACKENDS[backend]
    for need in (getattr(b.precisions.get(precision), "requires", None), b.requires):
        if need is not None:
            need()


FALLBACK_NOTE = ("onnxruntime is not installed (no wheel for this platform?): running on torch-opt, "
                 "about 2x slower (pip install onnx onnxruntime)")
# What auto runs, fastest first, for a model with a small receptive field on the CPU in fp32
# (docs/performance.md: SqueezeSR at 1.5x and 3x its floor, against 9.4x for plain eager).
AUTO_CPU = ("onnxruntime", "torch-opt")


def pick_backend(model: nn.Module, device: Union[str, torch.device] = "cpu", precision: str = "fp32",
                 note=None) -> str:
    """What `--backend auto` runs: the fastest backend measured for `model` that computes the same function.

    A precision only some backends' own graphs run (int8) goes to the first of them where the
    model's architecture has that path (`check_precision` then says what else is missing, if
    anything), else to torch (whose check says why not). On the CPU in fp32, a model with
    a small receptive field (exact pieces pay) runs on the first of AUTO_CPU that is installed,
    and `note(FALLBACK_NOTE)` says when that is not onnxruntime. Everything else, and every GPU,
    runs `torch`.
    """
    if precision != "fp32" and precision not in AUTOCAST:
        own = next((b.name for b in BACKENDS.values() if precision in b.precisions), None)
        return own if own is not None and _lacks_path(model, precision) is None else "torch"
    if torch.device(device).type != "cpu" or precision != "fp32" or halo_radius(model) is None:
        return "torch"
    fastest, fallback = AUTO_CPU
    if BACKENDS[fastest].available():
        return fastest
    if note is not None:
        note(FALLBACK_NOTE)
    return fallback


def prepare(model: nn.Module, backend: str = "torch", device: Union[str, torch.device] = "cpu",
            example: Optional[torch.Tensor] = None, threads: Optional[int] = None, precision: str = "fp32", say=None):
    """The callable that runs `model` on `backend`; it has `.scale` and maps (N,3,h,w) -> (N,3,sh,sw).

    `example` (an input of the size that will be run) lets the torchscript backend trace; the
    other backends do not need it. `precision` int8 runs the quantised graph (`say` hears when it
    is being made); fp16 and bf16 are the Upscaler's autocast around an fp32 runner.
    """
    check_precision(model, backend, device, precision)
    return BACKENDS[backend].build(model, torch.device(device), example, threads, precision, say)



def build_runner(model: nn.Module, backend: str, precision: str, dev: torch.device, threads: Optional[int] = None,
                 say: Optional[Callable[[str], None]] = None) -> Tuple[Any, str, str]:
    """(runner, backend label, precision for the Upscaler) for `--backend`/`--precision`, as
    `srkd upscale` runs them. A precision the backend's own graph runs (int8) is the runner's
    business: the Upscaler then runs float32 around it."""
    if check_backend(backend, upscale=True) == "auto":
        backend = pick_backend(model, dev, precision, note=say or (lambda msg: None))
    runner = prepare(model, backend, dev, threads=threads, precision=precision, say=say)
    if precision in PRECISIONS:
        return runner, backend, precision
    return runner, f"{backend} {precision}", "fp32"


def build_upscaler(lm: Any, backend: str = "auto", precision: str = "fp32", dev: Union[str, torch.device] = "cpu",
                   threads: Optional[int] = None, tile: Any = "auto", overlap: Optional[int] = 32, tta: bool = False,
                   say: Optional[Callable[[str], None]] = None) -> Tuple[Any, str]:
    """(the Upscaler, the backend label) that `srkd upscale` runs for a loaded model (`load_model`)
    and these options; `srkd eval` scores the same, and so can any caller of the API."""
    from .inference import Upscaler
    from .runtime.allocator import tune_cpu_allocator

    dev = torch.device(dev)
    if dev.type == "cpu":
        tune_cpu_allocator()  # glibc reuses freed memory: the runners then measured faster (see optimize)
    runner, label, upscaler_precision = build_runner(lm.model, backend, precision, dev, threads, say)
    return Upscaler(runner, lm.spec, lm.config, dev, upscaler_precision, tile, overlap, tta), label


__all__ = ["AUTO_CPU", "BACKENDS", "Backend", "DEVICES", "FALLBACK_NOTE", "PRECISION_CHOICES", "Precision",
           "backend_choices", "backend_help", "build_runner", "build_upscaler", "check_backend", "check_precision", "get_backend", "incompatibility",
           "onnx_runner", "optimize", "pick_backend", "prepare"]
