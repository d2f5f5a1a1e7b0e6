"""Running a model on whole images: device and precision choice, tiling with blended seams, TTA.

`Upscaler` takes a (1,C,H,W) float image in [0,1] (C = 1 or 3) and returns (1,C,sH,sW).
Tiles are placed on the model's window grid and blended with linear ramps over their
overlap, so a tiled result matches the untiled one to within a grey level.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple, Union

import torch

from .archs import ArchSpec, SRModel
from .errors import ConfigError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TileSpec = Union[int, str, None]


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: cuda, then mps, then cpu. An explicit device that is not there is a ConfigError."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: MPS is not available here (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: not a device (use auto, cpu, cuda, cuda:N or mps)") from None


def available_memory(device: torch.device) -> int:
    """Bytes free for activations on `device` now."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", info.get("MemFree", 4 << 30))
    except OSError:
        return 4 << 30


def bytes_per_input_pixel(spec: ArchSpec, config: dict, scale: int) -> int:
    """A conservative peak-activation estimate per LR pixel at float32, for auto tiling."""
    if spec.name == "swinir":
        dim, heads = config["embed_dim"], config["num_heads"]
        n = config["window_size"] ** 2
        per = 4 * (12 * dim + 3 * heads * n)  # tokens, qkv, mlp hidden, attention scores and softmax
    else:
        per = 4 * 6 * config.get("n_feats", 64)
    per += 4 * (3 * scale * scale) * 4 + 4 * config.get("n_feats", 64) * scale * scale * 2  # upsampler
    return per


@dataclass
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int


def tile_grid(h: int, w: int, tile: int, overlap: int, multiple: int = 1) -> List[Tile]:
    """Tiles of about `tile` pixels covering (h, w), overlapping by >= `overlap`, starting on `multiple`.

    Starts on the model's window grid keep SwinIR's windows where the untiled run has them;
    the last tile along each axis runs to the image's end (up to `multiple` - 1 pixels longer).
    """
    def spans(n: int) -> List[Tuple[int, int]]:
        if n <= tile:
            return [(0, n)]
        stride = max(multiple, (tile - overlap) // multiple * multiple)
        last = (n - tile) // multiple * multiple
        starts = list(range(0, last, stride)) + [last]
        return [(a, min(a + tile, n)) for a in starts[:-1]] + [(last, n)]

    return [Tile(y0, y1, x0, x1) for y0, y1 in spans(h) for x0, x1 in spans(w)]


def _ramp(n: int, lo_edge: bool, hi_edge: bool, overlap: int, device) -> torch.Tensor:
    """1-D blend weight for a tile side shared with a neighbour that overlaps it by `overlap`.

    The outer quarter of the overlap is context only (weight 0, where a tile sees least of its
    surroundings), the middle half ramps linearly, so two neighbours' ramps coincide and sum to 1.
    """
    wgt = torch.ones(n, device=device)
    q = overlap // 4
    k = overlap - 2 * q
    if overlap <= 0:
        return wgt
    ramp = torch.cat([torch.zeros(q, device=device), (torch.arange(k, device=device, dtype=torch.float32) + 0.5) / k])
    if not lo_edge:
        wgt[: q + k] = ramp
    if not hi_edge:
        wgt[n - q - k:] = torch.minimum(wgt[n - q - k:], ramp.flip(0))
    return wgt


class Upscaler:
    """A model plus how to run it: device, precision, tiles, TTA."""

    def __init__(
        self,
        model: SRModel,
        spec: ArchSpec,
        config: dict,
        device: Union[str, torch.device] = "auto",
        precision: str = "fp32",
        tile: TileSpec = "auto",
        overlap: int = 32,
        tta: bool = False,
        channels_last: bool = False,
    ):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision {precision}: choose fp32, fp16 or bf16")
        if precision == "fp16" and self.device.type == "cpu":
            raise ConfigError("--precision fp16 needs a GPU; on the CPU use fp32 or bf16")
        self.spec, self.config, self.scale = spec, config, model.scale
        self.model = model.to(self.device).eval()
        self.precision, self.tta = precision, tta
        self.overlap = max(0, int(overlap))
        self.multiple = spec.window_multiple(config)
        if tile not in (None, "auto", "none", 0):
            tile = int(tile)
            if tile < max(16, self.multiple) or tile <= 2 * self.overlap:
                raise ConfigError(f"--tile {tile}: too small (at least 16 and more than twice --tile-overlap {self.overlap})")
            tile = tile // self.multiple * self.multiple
        self.tile = tile
        self.warned_fallback = False
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.progress: Optional[Callable[[int, int], None]] = None

    # ---- public -------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gray = x.shape[1] == 1
        x = x.to(self.device, torch.float32)
        if gray:
            x = x.expand(-1, 3, -1, -1)
        if self.tta:
            outs = [self._inverse(self._run(self._forward_t(x, k)), k) for k in range(8)]
            y = torch.stack(outs).mean(0)
        else:
            y = self._run(x)
        y = y.clamp_(0, 1)
        return y.mean(1, keepdim=True) if gray else y

    def tile_size_for(self, h: int, w: int) -> Optional[int]:
        """The tile edge this run would use for an (h, w) input; None means the whole image."""
        if self.tile in (None, "none", 0):
            return None
        if self.tile != "auto":
            return None if (h <= self.tile and w <= self.tile) else int(self.tile)
        budget = available_memory(self.device) * (0.5 if self.device.type == "cuda" else 0.25)
        per = bytes_per_input_pixel(self.spec, self.config, self.scale)
        if self.precision != "fp32":
            per //= 2
        if h * w * per <= budget:
            return None
        edge = int(math.sqrt(budget / per))
        return max(self.multiple * 4, 4 * self.overlap, min(2048, edge) // self.multiple * self.multiple)

    # ---- internals ----------------------------------------------------------------------------
    @staticmethod
    def _forward_t(x: torch.Tensor, k: int) -> torch.Tensor:
        if k >= 4:
            x = x.flip(-1)
        return torch.rot90(x, k % 4, dims=(-2, -1))

    @staticmethod
    def _inverse(y: torch.Tensor, k: int) -> torch.Tensor:
        y = torch.rot90(y, -(k % 4), dims=(-2, -1))
        return y.flip(-1) if k >= 4 else y

    def _model_call(self, x: torch.Tensor) -> torch.Tensor:
        dtype = PRECISIONS[self.precision]
        if dtype == torch.float32:
            return self.model(x).float()
        with torch.autocast(self.device.type, dtype=dtype):
            y = self.model(x).float()
        if not torch.isfinite(y).all():
            # SwinIR's attention overflows in fp16 on some inputs: never hand back a black image.
            if not self.warned_fallback:
                warnings.warn(f"{self.precision} produced inf/NaN for {self.spec.name}; using fp32 instead")
                self.warned_fallback = True
            y = self.model(x).float()
        return y

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        tile = self.tile_size_for(x.shape[2], x.shape[3])
        while True:
            try:
                if tile is None:
                    return self._model_call(x)
                return self._run_tiled(x, tile)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
                if "out of memory" not in str(e) and "can't allocate memory" not in str(e):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                smaller = (tile or max(x.shape[2], x.shape[3])) // 2 // self.multiple * self.multiple
                if smaller < max(32, self.multiple * 4):
                    raise
                tile = smaller

    def _run_tiled(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        _, c, h, w = x.shape
        s = self.scale
        out = torch.zeros(1, c, h * s, w * s, device=x.device)
        norm = torch.zeros(1, 1, h * s, w * s, device=x.device)
        tiles = tile_grid(h, w, tile, self.overlap, self.multiple)
        for i, t in enumerate(tiles):
            y = self._model_call(x[:, :, t.y0:t.y1, t.x0:t.x1])
            wy = _ramp((t.y1 - t.y0) * s, t.y0 == 0, t.y1 == h, self.overlap * s, x.device)
            wx = _ramp((t.x1 - t.x0) * s, t.x0 == 0, t.x1 == w, self.overlap * s, x.device)
            wgt = wy[:, None] * wx[None, :]
            out[:, :, t.y0 * s:t.y1 * s, t.x0 * s:t.x1 * s] += y * wgt
            norm[:, :, t.y0 * s:t.y1 * s, t.x0 * s:t.x1 * s] += wgt
            if self.progress:
                self.progress(i + 1, len(tiles))
        return out / norm
