"""Running a model on whole images: device and precision choice, tiling with blended seams, TTA.

`Upscaler` takes a (1,C,H,W) float image in [0,1] (C = 1 or 3) and returns (1,C,sH,sW) on the
CPU. Large images are cut into tiles that start on the model's window grid and overlap; each
tile's output is weighted by ramps over the overlaps, normalised so the weights sum to one, and
added straight into the one output buffer. A tiled result matches the untiled one to within a
grey level, and the memory needed beyond the output is that of one tile, whatever the image size.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, List, Optional, Tuple, Union

import torch

from .archs import ArchSpec, SRModel
from .errors import CheckpointError, ConfigError, InputError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TileSpec = Union[int, str, None]

# Share of the free memory auto tiling lets one tile's activations take. The CPU share is
# lower: other programs live in the same memory, and writing the output file needs room too.
MEMORY_SHARE = {"cpu": 0.4, "cuda": 0.6, "mps": 0.5}
# `auto` runs an image whole when it fits and its longer side is at most WHOLE_MAX (benchmark
# images then give exactly the untiled result), and otherwise uses tiles of at most TILE_MAX.
# The CPU cap is low on purpose: glibc maps each tensor over 32 MB afresh and page-faults it
# in, so larger tiles measured up to 3x slower per pixel despite less overlap (docs/upscale.md).
WHOLE_MAX = {"cpu": 1024, "cuda": 2048, "mps": 1024}
TILE_MAX = {"cpu": 256, "cuda": 2048, "mps": 1024}
MIN_TILE = 32
# The default tile overlap: 4 x the architecture's receptive field (`ArchSpec.receptive_field`), so
# every output pixel a tile's blend weights keep (the outer quarter of an overlap gets weight 0)
# sees all of the input that can change it, within these bounds; 32 where no field is declared.
OVERLAP_MIN, OVERLAP_MAX = 32, 64


def default_overlap(spec: ArchSpec, config: dict, scale: int) -> int:
    """The tile overlap an architecture gets when none is given (see OVERLAP_MIN)."""
    if spec.receptive_field is None:
        return OVERLAP_MIN
    reach = int(spec.receptive_field(config, scale))
    return min(OVERLAP_MAX, max(OVERLAP_MIN, 4 * reach))


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
    """Bytes free for new tensors on `device` now (CPU: the kernel's MemAvailable, or less
    where this process's own limits leave less room)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        free = info.get("MemAvailable", info.get("MemFree", 4 << 30))
    except (OSError, ValueError, IndexError):
        free = 4 << 30
    return min(free, _room_under_limits())


def _room_under_limits() -> int:
    """Room left under limits MemAvailable does not show: an address-space limit (`ulimit -v`)
    and the memory limit of this process's cgroup (a container's), where an allocation that
    does not fit fails or summons the OOM killer however much the machine has free."""
    room = 1 << 62
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            room = min(room, soft - vm)
    except (ImportError, OSError, ValueError, StopIteration):
        pass
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
        for _, controllers, rel in lines:
            if controllers == "":  # cgroup v2
                base, limit, usage = "/sys/fs/cgroup", "memory.max", "memory.current"
            elif "memory" in controllers.split(","):  # cgroup v1
                base, limit, usage = "/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
            else:
                continue
            folder = base + rel.rstrip("/")
            try:
                with open(f"{folder}/{limit}") as f:
                    text = f.read().strip()
                if text != "max" and int(text) < 1 << 60:  # v1 writes "no limit" as ~2^63
                    with open(f"{folder}/{usage}") as f:
                        room = min(room, int(text) - int(f.read()))
            except (OSError, ValueError):
                pass
    except (OSError, ValueError):
        pass
    return max(0, room)


def bytes_per_input_pixel(spec: ArchSpec, config: dict, scale: int) -> int:
    """Peak float32 memory of one forward pass per input pixel, its output included.

    Each architecture states its own (`ArchSpec.bytes_per_pixel`), fitted with about 10 % to
    spare to the peak RSS of tiled CPU runs of the default configurations (docs/upscale.md).
    """
    return int(spec.bytes_per_pixel(config, scale))


def tile_spans(n: int, tile: int, overlap: int, multiple: int = 1) -> List[Tuple[int, int]]:
    """[start, end) spans of about `tile` covering [0, n), neighbours overlapping by >= `overlap`.

    Starts lie on multiples of `multiple` (SwinIR's windows then fall where the untiled run has
    them) and are spread evenly; the last span ends at n and may be up to `multiple` - 1 longer.
    """
    last = (n - tile) // multiple if n > tile else 0
    if last == 0:
        return [(0, n)]
    step = max(multiple, (tile - overlap) // multiple * multiple)  # the longest allowed stride
    count = 1 + math.ceil(last * multiple / step)
    # Round half up (not to even): then no stride exceeds `step`, so no overlap falls short.
    starts = [(2 * i * last + count - 1) // (2 * (count - 1)) * multiple for i in range(count)]
    return [(a, min(a + tile, n)) for a in starts[:-1]] + [(starts[-1], n)]


def _ramp(n: int, lo_edge: bool, hi_edge: bool, overlap: int) -> torch.Tensor:
    """1-D blend weight of a span whose sides not at the image edge are shared with a neighbour.

    The outer quarter of the overlap gets weight 0 (context only: there a tile sees least of
    its surroundings), the middle half ramps linearly, so where two neighbours overlap by
    exactly `overlap` their ramps sum to 1; `blend_weights` normalises the other cases.
    """
    wgt = torch.ones(n)
    q = overlap // 4
    k = overlap - 2 * q
    if overlap <= 0 or k <= 0:
        return wgt
    ramp = torch.cat([torch.zeros(q), (torch.arange(k, dtype=torch.float32) + 0.5) / k])
    if not lo_edge:
        wgt[: q + k] = ramp
    if not hi_edge:
        wgt[n - q - k:] = torch.minimum(wgt[n - q - k:], ramp.flip(0))
    return wgt


def blend_weights(spans: List[Tuple[int, int]], n: int, overlap: int, scale: int) -> List[torch.Tensor]:
    """Per span, its 1-D weights at output resolution, normalised to sum to 1 over all spans.

    The 2-D weight of a tile is the product of its row and column weights; as the tiles form
    a grid, the 2-D weights then sum to 1 too, so no image-sized weight map is ever needed.
    """
    ramps = [_ramp((b - a) * scale, a == 0, b == n, overlap * scale) for a, b in spans]
    total = torch.zeros(n * scale)
    for (a, b), r in zip(spans, ramps):
        total[a * scale:b * scale] += r
    if not bool((total > 0).all()):
        raise AssertionError(f"tile spans {spans} leave pixels without weight")
    return [r / total[a * scale:b * scale] for (a, b), r in zip(spans, ramps)]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations (k = 0 is the identity) of the last two dimensions."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def dihedral_inverse(y: torch.Tensor, k: int) -> torch.Tensor:
    y = torch.rot90(y, -(k % 4), dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


def _axis_directions(k: int) -> Tuple[bool, bool]:
    """Whether the k-th transform keeps the direction of the image's rows and of its columns
    (wherever it puts them): a tile grid anchored at the top-left of the transformed image is
    anchored at the far end of each reversed axis of the original."""
    r = torch.tensor([[0, 0], [1, 1]])
    tr, tc = dihedral(r, k), dihedral(r.t(), k)
    if tr[0, 0] != tr[1, 0]:  # rows stay rows
        return bool(tr[1, 0] > tr[0, 0]), bool(tc[0, 1] > tc[0, 0])
    return bool(tr[0, 1] > tr[0, 0]), bool(tc[1, 0] > tc[0, 0])


def _anchored_spans(n: int, tile: int, overlap: int, multiple: int, forward: bool) -> List[Tuple[int, int]]:
    spans = tile_spans(n, tile, overlap, multiple)
    return spans if forward else [(n - b, n - a) for a, b in reversed(spans)]


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # cannot tell: say nothing


def _is_oom(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.cuda.OutOfMemoryError) or any(
        s in text for s in ("out of memory", "can't allocate memory", "not enough memory"))


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


class Upscaler:
    """A model plus how to run it: device, precision, tiles, TTA. Call it on a (1,C,H,W) image."""

    def __init__(
        self,
        model: SRModel,
        spec: ArchSpec,
        config: dict,
        device: Union[str, torch.device] = "auto",
        precision: str = "fp32",
        tile: TileSpec = "auto",
        overlap: Optional[int] = 32,
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
        self.multiple = spec.window_multiple(config)
        if isinstance(tile, str) and tile.lower() in ("none", "0"):
            tile = None
        if overlap is None:  # from the architecture; a given --tile gets less (not under 32) rather than an error
            overlap = default_overlap(spec, config, model.scale)
            if tile not in (None, "auto", 0):
                overlap = max(OVERLAP_MIN, min(overlap, (int(tile) // self.multiple * self.multiple - 1) // 2))
        self.overlap = max(0, int(overlap))
        if tile not in (None, "auto", 0):
            asked, tile = int(tile), int(tile) // self.multiple * self.multiple
            if tile < max(MIN_TILE, self.multiple) or tile <= 2 * self.overlap:
                m = self.multiple
                least = -(-max(MIN_TILE, m, 2 * self.overlap + 1) // m) * m
                grid = f", a multiple of {m} for {spec.name}'s windows" if m > 1 else ""
                raise ConfigError(f"--tile {asked}: too small; the smallest tile here is {least} (at least {MIN_TILE}, "
                                  f"more than twice --tile-overlap {self.overlap}{grid}); or lower --tile-overlap")
        self.tile = tile or None
        self.half_failed = False  # set once reduced precision gave inf/NaN: fp32 from then on
        self.bf16_checked = False
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.progress: Optional[Callable[[int, int], None]] = None  # (tiles done, tiles in all)
        self.warn: Callable[[str], None] = lambda msg: warnings.warn(msg, stacklevel=3)

    # ---- public -------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(1,C,H,W) in [0,1], C = 1 or 3 -> (1,C,sH,sW) float32 on the CPU, clamped to [0,1].

        A one-channel image is run as grey RGB and the channels of the result averaged.
        """
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected a (1, 1|3, H, W) image, got {tuple(x.shape)}")
        x = x.float()
        h, w = x.shape[2:]
        tile = self.tile_size_for(h, w)
        while True:
            try:
                if tile is None:
                    y = self._infer(x.to(self.device)).cpu()
                    y = y.mean(1, keepdim=True) if x.shape[1] == 1 else y
                else:
                    y = self._run_tiled(x, tile)
                return y.clamp_(0, 1)
            except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
                if not _is_oom(e):
                    raise
                y = None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                smaller = (tile or max(h, w)) // 2 // self.multiple * self.multiple
                if smaller < self._min_tile():
                    raise InputError(f"out of memory on {self.device} even with {self._min_tile()}-pixel tiles "
                                     "(free some memory or use --device cpu)") from None
                tile = smaller

    def tile_size_for(self, h: int, w: int) -> Optional[int]:
        """The tile edge a call on an (h, w) input uses first; None means the whole image at once."""
        if self.tile is None:
            return None
        if self.tile != "auto":
            return None if (h <= self.tile and w <= self.tile) else int(self.tile)
        if max(h, w) <= WHOLE_MAX.get(self.device.type, 1024) and self.peak_bytes(h, w, None) <= self.memory_budget():
            return None
        cap = TILE_MAX.get(self.device.type, 1024)
        per = self._bytes_per_pixel()
        room = self.memory_budget(self.peak_bytes(h, w, 0))
        # A tile may be up to `multiple` - 1 pixels longer than asked (the last in a row).
        edge = int(math.sqrt(room / per)) - self.multiple
        edge = min(cap, edge) // self.multiple * self.multiple
        return max(self._min_tile(), edge)

    def check_room(self, h: int, w: int, channels: int = 3) -> None:
        """Refuse an (h, w) input whose float input and x`scale` output cannot fit in the host
        memory free now. Made from the file's header, before decoding: decoding a large image
        costs gigabytes by itself."""
        s = self.scale
        need = 4 * channels * h * w * (1 + s * s)
        free = available_memory(torch.device("cpu"))
        if need > free:
            raise InputError(f"not enough memory for the x{s} output ({w * s}x{h * s} needs {_gb(need)} "
                             f"with the input, {_gb(free)} free); refused before decoding")

    def memory_budget(self, fixed: int = 0) -> float:
        """Bytes auto tiling may give to activations on the device: a share of what is free now
        once `fixed` bytes (the output buffer of a tiled run on the CPU) are taken."""
        return max(0.0, available_memory(self.device) - fixed) * MEMORY_SHARE.get(self.device.type, 0.4)

    def peak_bytes(self, h: int, w: int, tile: Optional[int]) -> int:
        """Estimated peak memory on the device for an (h, w) input, whole (tile None) or tiled.

        Tiled, the device holds one tile's activations; on the CPU it also holds the input and
        the output buffer (on a GPU those stay in host memory). `tile` 0 gives that fixed part.
        """
        c, s = 3, self.scale
        per = self._bytes_per_pixel()
        if tile is None:
            return per * h * w + 4 * c * h * w
        side_h, side_w = min(h, tile + self.multiple - 1), min(w, tile + self.multiple - 1)
        act = per * side_h * side_w if tile else 0
        host = 4 * c * h * w * (1 + s * s)
        return act + (host if self.device.type == "cpu" else 0)

    # ---- internals ----------------------------------------------------------------------------
    def _bytes_per_pixel(self) -> int:
        per = bytes_per_input_pixel(self.spec, self.config, self.scale)
        if self.precision != "fp32" and self.device.type == "cpu":
            per = per * 5 // 2  # CPU autocast keeps float32 and bfloat16 copies: measured 2.1x
        if self.tta:
            per += 2 * 4 * 3 * self.scale * self.scale  # the running sum and one transformed output
        return per

    def _min_tile(self) -> int:
        m = self.multiple
        return -(-max(MIN_TILE, 4 * m, 2 * self.overlap + m) // m) * m

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """The model on a whole (1,1|3,h,w) image on the device; TTA averages the 8 transforms."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if not self.tta:
            return self._model_call(x)
        acc = self._model_call(x)
        for k in range(1, 8):
            acc += dihedral_inverse(self._model_call(dihedral(x, k)), k)
        return acc.div_(8)

    def _model_call(self, x: torch.Tensor) -> torch.Tensor:
        dtype = PRECISIONS[self.precision]
        if dtype == torch.bfloat16 and self.device.type == "cpu" and not self.bf16_checked:
            self.bf16_checked = True
            if not _cpu_has_bf16():
                self.warn("this CPU has no bfloat16 instructions: --precision bf16 is emulated and "
                          "slower than fp32 here")
        if dtype != torch.float32 and not self.half_failed:
            with torch.autocast(self.device.type, dtype=dtype):
                y = self.model(x)
            y = y.float()
            if bool(torch.isfinite(y).all()):
                return y
            # SwinIR's attention overflows fp16 on some inputs: redo in fp32, never write black.
            self.half_failed = True
            self.warn(f"--precision {self.precision} gave inf/NaN with {self.spec.name}; "
                      "running in fp32 instead")
        y = self.model(x).float()
        if not bool(torch.isfinite(y).all()):
            raise CheckpointError(f"the {self.spec.name} model's output holds inf/NaN even in fp32 "
                                  "(broken weights?)")
        return y

    def _run_tiled(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        _, c, h, w = x.shape
        s = self.scale
        out_bytes = 4 * c * h * w * s * s
        free = available_memory(torch.device("cpu"))
        # Checked first: on Linux an allocation too large tends to summon the OOM killer
        # rather than fail.
        if out_bytes > free:
            raise InputError(f"not enough memory for the x{s} output ({w * s}x{h * s} needs "
                             f"{_gb(out_bytes)}, {_gb(free)} free)")
        out = torch.zeros(1, c, h * s, w * s)
        transforms = range(8) if self.tta else range(1)
        total, done = len(transforms) * len(tile_spans(h, tile, self.overlap, self.multiple)) * len(
            tile_spans(w, tile, self.overlap, self.multiple)), 0
        for k in transforms:
            # Each transform is tiled as the transformed image would be on its own, so that
            # SwinIR's windows fall where an untiled run of that transform puts them.
            rows_forward, cols_forward = _axis_directions(k)
            rows = _anchored_spans(h, tile, self.overlap, self.multiple, rows_forward)
            cols = _anchored_spans(w, tile, self.overlap, self.multiple, cols_forward)
            wy = blend_weights(rows, h, self.overlap, s)
            wx = blend_weights(cols, w, self.overlap, s)
            for (y0, y1), ry in zip(rows, wy):
                for (x0, x1), rx in zip(cols, wx):
                    piece = x[:, :, y0:y1, x0:x1].to(self.device)
                    if c == 1:
                        piece = piece.expand(-1, 3, -1, -1)
                    y = dihedral_inverse(self._model_call(dihedral(piece, k)), k).cpu()
                    if c == 1:
                        y = y.mean(1, keepdim=True)
                    wgt = ry[:, None] * rx[None, :]
                    out[:, :, y0 * s:y1 * s, x0 * s:x1 * s].addcmul_(y, wgt / len(transforms) if self.tta else wgt)
                    done += 1
                    if self.progress:
                        self.progress(done, total)
        return out
