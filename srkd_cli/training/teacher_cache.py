"""The teacher cache: a frozen teacher's outputs and features, computed once and cropped every step.

A distillation step normally runs the teacher on every batch, which for a teacher 25x the
student's size costs most of the step. The teacher's answer for a patch only depends on the
training image, its dihedral augmentation and the crop, so the cache runs the teacher once per
(image, augmentation) on the whole augmented LR image and every later step crops its targets
at the place the patch sampler cut the LR patch. Entries are made the first time a batch
needs them and kept in half precision.

What it changes: the live teacher sees only the patch (zero padding at its borders, and for
IMDN contrast-aware channel attention pooled over the patch); the cached teacher saw the whole
image, as it does at evaluation. Targets agree in the patch interior for purely local teachers
and differ within the teacher's receptive radius of the patch border (docs/training.md).

Modes: `off` (live teacher), `ram` (entries in memory; refused when the full cache would take
more than `RAM_SHARE` of the available memory), a folder (one `.npy` per entry, memory-mapped,
reused by later runs of the same teacher, data and scale), or `halo` / `halo:R` (no cache: the
teacher runs on every patch widened by R LR pixels of real image on each side, its receptive
radius, and its answer is cropped back to the patch; `HaloTeacher`).

Storage (`--cache-dtype`): `fp16` (2 bytes a value, the default), `uint8` (1 byte: the teacher's
image as the 8-bit image it would write, clamped to [0, 1]; each feature channel of an entry in
256 steps between its minimum and maximum) or `fp32`. The fill may run the teacher under bf16 autocast (`precision`).
docs/training.md ("The teacher cache at user scale") has the measured costs of each.

A folder entry that cannot be read back (a bad pickle, a truncated file, a wrong shape) is named,
deleted and computed again; the fill checks `should_stop` between entries and reports an ETA.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import CheckpointError, ConfigError
from ..imaging.imresize import imresize
from ..inference import available_memory
from .data import MARGIN, HRStore, PatchSampler

CODES = 8  # dihedral augmentations: v-flip, h-flip, transpose bits
OUTPUT = "output"  # the entry part holding the teacher's image (features keep their own names)
RAM_SHARE = 0.5
DTYPES = ("fp16", "uint8", "fp32")  # how targets are stored (uint8 features: per-channel min and step)
QUANT = "@q"  # suffix of a uint8 feature's (C, 2) float32 (min, step) per channel
HALO = "halo"
Targets = Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]


def augment(img: torch.Tensor, code: int) -> torch.Tensor:
    """(C,H,W) image under the sampler's dihedral code: bit 0 v-flip, bit 1 h-flip, bit 2 transpose."""
    if code & 1:
        img = img.flip(-2)
    if code & 2:
        img = img.flip(-1)
    if code & 4:
        img = img.transpose(-2, -1)
    return img


def lr_corner(params: torch.Tensor, scale: int, patch: int) -> Tuple[int, int, int, int]:
    """(image, code, top, left): where a sampler draw's LR patch lies in the augmented image's LR.

    `scale` is the sampler's (1 under --teacher-only: the patch is cut from the image itself)."""
    _, _, hc, wc, top, left, code, index = (int(v) for v in params)
    t, l = top // scale + MARGIN, left // scale + MARGIN
    h_lr, w_lr = hc // scale, wc // scale
    y = h_lr - t - patch if code & 1 else t
    x = w_lr - l - patch if code & 2 else l
    if code & 4:
        y, x = x, y
    return index, code, y, x


def teacher_identity(teacher: torch.nn.Module) -> str:
    """sha256 over the teacher's tensors: the cache is valid for these weights only."""
    h = hashlib.sha256()
    for k, v in teacher.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def fill_precision(asked: str, device: torch.device, teacher: torch.nn.Module) -> str:
    """The precision the teacher runs in to fill the cache (or per patch, halo): `--precision` fp32 or
    bf16 as asked; auto: bf16 on CUDA, on a CPU only with bf16 units and a teacher measured faster
    there (`ArchSpec.cpu_bf16_fill`)."""
    if asked == "fp32" or device.type not in ("cpu", "cuda"):
        return "fp32"
    if asked == "bf16" or device.type == "cuda":
        return "bf16"
    from ..archs import spec_for
    from ..runtime.cpu import cpu_bf16_units

    spec = spec_for(teacher)
    return "bf16" if cpu_bf16_units() and spec is not None and spec.cpu_bf16_fill else "fp32"


def teacher_autocast(device: torch.device, precision: str):
    """bf16 autocast for the teacher's forward where `precision` says so, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


@dataclass
class FillProgress:
    done: int  # entries ready (made or read back)
    total: int
    made: int  # computed by this process
    elapsed: float  # seconds since the fill began
    eta: Optional[float]  # seconds left, from the time per LR pixel computed so far; None before the first


class TeacherCache:
    """Teacher targets for every (training image, augmentation), made on first use (fp16 by default)."""

    def __init__(self, teacher: torch.nn.Module, store: HRStore, scale: int, patch: int,
                 features: Sequence[str], need_output: bool, mode: str, fingerprint: str = "", *,
                 input_scale: Optional[int] = None, dtype: str = "fp16", precision: str = "fp32"):
        if not features and not need_output:
            raise ConfigError("--teacher-cache: this recipe uses neither the teacher's output nor its features")
        if dtype not in DTYPES:
            raise ConfigError(f"--cache-dtype {dtype}: use one of {', '.join(DTYPES)}")
        self.teacher, self.store, self.scale, self.patch = teacher, store, scale, patch
        # The teacher's input is the HR image downscaled by `input_scale` (the scale), or the image
        # itself (1: --teacher-only, where the training images are the inputs).
        self.input_scale = scale if input_scale is None else input_scale
        self.dtype, self.precision = dtype, precision
        self.features, self.need_output = tuple(features), need_output
        self.device = store.flat.device
        self.mode = mode
        self.on_warning: Optional[Callable[[str], None]] = None  # repaired entries are reported here
        self.repaired: List[Path] = []
        # (image, code) -> its parts: tensors (ram) or memory maps of the folder's files
        self._entries: Dict[Tuple[int, int], Dict[str, Union[torch.Tensor, np.ndarray]]] = {}
        self.channels = self._probe_channels()
        si = self.input_scale
        self.total_bytes = sum(h // si * (w // si) for h, w in store.sizes) * CODES * self.bytes_per_lr_pixel
        self.folder: Optional[Path] = None
        if mode == "ram":
            free = available_memory(torch.device("cpu"))
            if self.total_bytes > RAM_SHARE * free:
                raise ConfigError(
                    f"--teacher-cache ram: the full cache takes {self.total_bytes / 2**30:.1f} GiB, more than "
                    f"{RAM_SHARE:.0%} of the {free / 2**30:.1f} GiB available; give a folder "
                    "(--teacher-cache DIR), --cache-dtype uint8, or fewer features")
        else:
            # One folder per (teacher, data, scale): runs needing other parts of it share what they can.
            # Only what differs from the first format enters the key, so earlier folders stay valid.
            extra = {k: v for k, v, first in (("store", dtype, "fp16"), ("fill", precision, "fp32"),
                                              ("input_scale", self.input_scale, scale)) if v != first}
            key = hashlib.sha256(json.dumps({
                "teacher": teacher_identity(teacher), "data": fingerprint, "scale": scale,
                "files": [f.name for f in store.files], **extra,
            }, sort_keys=True).encode()).hexdigest()[:16]
            self.folder = Path(mode).expanduser() / key
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"--teacher-cache {mode}: cannot create the folder ({e.strerror})") from None
        self.made = 0  # entries computed by this process (the rest came from the folder)

    @property
    def bytes_per_lr_pixel(self) -> int:
        """Bytes per pixel of the teacher's input, per augmentation."""
        out = 3 * self.scale * self.scale if self.need_output else 0
        size = {"fp16": 2, "uint8": 1, "fp32": 4}[self.dtype]
        return size * (sum(self.channels.values()) + out)

    def describe(self) -> str:
        where = "in memory" if self.folder is None else f"in {self.folder}"
        how = f", {self.dtype}" + (", filled in bf16" if self.precision == "bf16" else "")
        return (f"teacher cache {where}: {len(self.store) * CODES} entries, "
                f"{self.total_bytes / 2**30:.2f} GiB when full ({self.bytes_per_lr_pixel} bytes per LR pixel{how})")

    def _probe_channels(self) -> Dict[str, int]:
        x = torch.full((1, 3, 8, 8), 0.5, device=self.device)
        with torch.no_grad():
            _, feats = self.teacher.forward_with_features(x, self.features)
        return {k: int(v.shape[1]) for k, v in feats.items()}

    # ------------------------------------------------------------------ entries

    def lr_image(self, index: int, code: int) -> torch.Tensor:
        """(1,3,h,w) LR of the augmented HR image, as the sampler's patches are made (uint8 levels);
        under --teacher-only (input_scale 1) the augmented image itself."""
        off, (h, w) = self.store.offsets[index], self.store.sizes[index]
        hr = self.store.flat[off : off + h * w * 3].view(h, w, 3).permute(2, 0, 1)
        s = self.input_scale
        hr = augment(hr[:, : h // s * s, : w // s * s], code)
        if s == 1:
            return hr[None].float().div_(255.0)
        return imresize(hr[None].float().div_(255.0), scale=1.0 / s, quantize_to=1.0)

    def _lr_size(self, index: int, code: int) -> Tuple[int, int]:
        h, w = self.store.sizes[index]
        h, w = h // self.input_scale, w // self.input_scale
        return (w, h) if code & 4 else (h, w)

    def _expected(self, index: int, code: int) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
        """The shape and dtype of each stored part of an entry: what a file read back must hold."""
        h, w = self._lr_size(index, code)
        feat = np.dtype({"fp16": np.float16, "uint8": np.uint8, "fp32": np.float32}[self.dtype])
        out = {k: ((c, h, w), feat) for k, c in self.channels.items()}
        if self.dtype == "uint8":
            out.update({k + QUANT: ((c, 2), np.dtype(np.float32)) for k, c in self.channels.items()})
        if self.need_output:
            s = self.scale
            out[OUTPUT] = ((3, h * s, w * s), np.dtype({"fp16": np.float16, "uint8": np.uint8, "fp32": np.float32}[self.dtype]))
        return out

    def _parts(self) -> List[str]:
        return [*self.features, *([OUTPUT] if self.need_output else [])]

    def _stored_parts(self) -> List[str]:
        return [*self._parts(), *([k + QUANT for k in self.features] if self.dtype == "uint8" else [])]

    def _compute(self, index: int, code: int) -> Dict[str, torch.Tensor]:
        """{feature name: (C, h, w), OUTPUT: (3, hs, ws)} on the CPU, stored as `dtype` says."""
        lr = self.lr_image(index, code)
        with torch.no_grad(), teacher_autocast(self.device, self.precision):
            out, feats = self.teacher.forward_with_features(lr, self.features)
        entry: Dict[str, torch.Tensor] = {}
        for k in self.features:
            f = feats[k][0].detach().float().to("cpu")
            if self.dtype == "uint8":
                entry[k], entry[k + QUANT] = quantize_feature(f)
            else:
                entry[k] = f.to(torch.float32 if self.dtype == "fp32" else torch.float16)
        if self.need_output:
            entry[OUTPUT] = store_image(out[0], self.dtype)
        self.made += 1
        return entry

    def entry(self, index: int, code: int) -> Dict[str, Union[torch.Tensor, np.ndarray]]:
        key = (index, code)
        if key not in self._entries:
            self._entries[key] = self._compute(index, code) if self.folder is None else self._from_folder(index, code)
        return self._entries[key]

    def _from_folder(self, index: int, code: int) -> Dict[str, np.ndarray]:
        assert self.folder is not None
        paths = {part: self.folder / f"{index:05d}_{code}_{part}.npy" for part in self._stored_parts()}
        expected = self._expected(index, code)
        for attempt in range(2):
            if not all(p.is_file() for p in paths.values()):
                for part, tensor in self._compute(index, code).items():
                    atomic_write(paths[part], lambda tmp, a=tensor.numpy(): _save_npy(tmp, a))
            try:
                # Memory-mapped once and kept: the OS holds what fits, so a folder cache never runs
                # out of memory, and a step's crops read no file headers.
                return {part: _open_entry(path, *expected[part]) for part, path in paths.items()}
            except _Damaged as e:
                if attempt:
                    raise CheckpointError(f"teacher cache: {e.path}: {e.why}, again after it was rebuilt; "
                                          f"delete {self.folder}") from None
                self.repaired.append(e.path)
                if self.on_warning is not None:
                    self.on_warning(f"teacher cache: {e.path} is damaged ({e.why}); rebuilding the entry")
                for p in paths.values():
                    p.unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def fill(self, progress: Optional[Callable[[FillProgress], None]] = None,
             should_stop: Optional[Callable[[], bool]] = None) -> bool:
        """Make every entry now, so that training steps run at their steady speed from the first.

        `should_stop()` is asked before each entry (a signal, a time limit): False is returned as
        soon as it says so, with the entries made until then kept (a folder keeps them for the next
        run). `progress` gets a FillProgress after each entry, its ETA from the time per LR pixel
        of the entries computed so far."""
        total = len(self.store) * CODES
        pixels = [h // self.input_scale * (w // self.input_scale) for h, w in self.store.sizes]
        left = sum(pixels) * CODES
        t0 = time.perf_counter()
        computing, computed_pixels = 0.0, 0
        for n, (index, code) in enumerate((i, c) for i in range(len(self.store)) for c in range(CODES)):
            if should_stop is not None and should_stop():
                return False
            made, t = self.made, time.perf_counter()
            self.entry(index, code)
            left -= pixels[index]
            if self.made > made:
                computing += time.perf_counter() - t
                computed_pixels += pixels[index]
            if progress is not None:
                eta = computing / computed_pixels * left if computed_pixels else None
                progress(FillProgress(n + 1, total, self.made, time.perf_counter() - t0, eta))
        return True

    # ------------------------------------------------------------------ batches

    def targets(self, params: torch.Tensor) -> Targets:
        """The teacher's output crops (B,3,Ps,Ps) and feature crops (B,C,P,P) for a sampler draw."""
        p, s = self.patch, self.scale
        crops: Dict[str, List[torch.Tensor]] = {part: [] for part in self._parts()}
        for row in params.cpu():
            index, code, y, x = lr_corner(row, self.input_scale, p)
            entry = self.entry(index, code)
            for part in crops:
                k = s if part == OUTPUT else 1
                crop = _tensor(entry[part][:, y * k : (y + p) * k, x * k : (x + p) * k])
                if part + QUANT in entry:
                    q = _tensor(entry[part + QUANT])
                    crop = crop.float().mul_(q[:, 1, None, None]).add_(q[:, 0, None, None])
                crops[part].append(crop)
        stacked = {part: torch.stack(v).to(self.device) for part, v in crops.items()}
        out = stacked.pop(OUTPUT, None)
        if out is not None and out.dtype == torch.uint8:
            out = out.float().div_(255.0)
        return out, stacked


def quantize_feature(f: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(C, h, w) float -> uint8 codes and (C, 2) float32 (min, step): each channel in 256 steps of its range."""
    lo, hi = f.amin(dim=(1, 2)), f.amax(dim=(1, 2))
    step = ((hi - lo) / 255.0).clamp_min(1e-12)
    q = ((f - lo[:, None, None]) / step[:, None, None]).round_().clamp_(0, 255).to(torch.uint8)
    return q, torch.stack([lo, step], 1).float()


def store_image(out: torch.Tensor, dtype: str) -> torch.Tensor:
    """The teacher's (3, H, W) image as the cache keeps it (CPU): fp16, fp32, or the 8-bit image."""
    out = out.detach().float().to("cpu")
    if dtype == "uint8":
        return out.clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return out.to(torch.float32 if dtype == "fp32" else torch.float16)


class _Damaged(Exception):
    def __init__(self, path: Path, why: str):
        super().__init__(why)
        self.path, self.why = path, why


def _open_entry(path: Path, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A memory map of one stored part, or _Damaged saying what is wrong with the file."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise _Damaged(path, "missing") from None
    except (ValueError, OSError, EOFError) as e:  # a pickle, a bad header, a truncated body
        raise _Damaged(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}") from None
    if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape) or arr.dtype != dtype:
        got = f"{getattr(arr, 'shape', '?')} {getattr(arr, 'dtype', type(arr).__name__)}"
        raise _Damaged(path, f"holds {got}, expected {tuple(shape)} {dtype}")
    return arr


def _tensor(crop: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    if isinstance(crop, torch.Tensor):
        return crop
    a = np.ascontiguousarray(crop)  # a copy where the crop is strided; a contiguous memory map is copied here
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to the temporary name
        np.save(f, array)


def parse_mode(value: Union[str, Path, None]) -> str:
    """`off`, `ram`, `halo`, `halo:R`, or a folder path."""
    text = str(value or "off").strip()
    if not text:
        raise ConfigError("--teacher-cache: give off, ram, halo[:R] or a folder")
    if text.startswith(HALO + ":"):
        r = text[len(HALO) + 1:]
        if not r.isdigit():
            raise ConfigError(f"--teacher-cache {text}: halo:R takes R, the margin in LR pixels, a whole number >= 0")
    return text


DEFAULT_HALO = 16  # LR pixels, for a teacher that declares no receptive radius (global pooling: approximate)


def halo_margin(mode: str, teacher: torch.nn.Module, config: Optional[Dict] = None) -> Optional[int]:
    """The margin `halo` mode widens each patch by (None for any other mode): `halo:R`'s R, else the
    teacher's declared reach (archs: `receptive_radius`, else `receptive_field` of its `config`),
    else DEFAULT_HALO (a teacher with global pooling: approximate)."""
    if mode == HALO:
        from ..archs import halo_radius, spec_for

        r = halo_radius(teacher)
        spec = spec_for(teacher)
        if r is None and config is not None and spec is not None and getattr(spec, "receptive_field", None):
            r = spec.receptive_field(config, int(teacher.scale))
        return DEFAULT_HALO if r is None else int(r)
    if mode.startswith(HALO + ":"):
        return int(mode[len(HALO) + 1:])
    return None


class HaloTeacher:
    """No cache: the teacher runs on every patch widened by `margin` LR pixels of the real image on
    each side (its receptive radius), and its answer is cropped back to the patch.

    It stands in for both the patch sampler (`next`, `last_params`, `state_dict`) and the cache
    (`targets`, `fill`, `describe`): the wide sampler draws (patch + 2 margin) windows, the teacher
    sees them whole, the student the centre. For a purely local teacher whose radius is at most the
    margin the targets equal the whole-image answer, as the cache's do, with no storage and no
    fill; each step pays the teacher's forward on the wider window instead."""

    folder = None
    repaired: List[Path] = []

    def __init__(self, teacher: torch.nn.Module, wide: PatchSampler, scale: int, input_scale: int, patch: int,
                 margin: int, features: Sequence[str], need_output: bool, precision: str = "fp32"):
        self.teacher, self.wide, self.scale, self.input_scale = teacher, wide, scale, input_scale
        self.patch, self.margin, self.features, self.need_output = patch, margin, tuple(features), need_output
        self.precision, self.device = precision, wide.device
        self.made = 0
        self.on_warning: Optional[Callable[[str], None]] = None
        self._targets: Targets = (None, {})

    @property
    def last_params(self) -> torch.Tensor:
        return self.wide.last_params

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.wide.state_dict()

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.wide.load_state_dict(state)

    @property
    def generator(self) -> torch.Generator:
        return self.wide.generator

    def next(self) -> Tuple[torch.Tensor, torch.Tensor]:
        lr, hr = self.wide.next()
        m, p, s, si = self.margin, self.patch, self.scale, self.input_scale
        with torch.no_grad(), teacher_autocast(self.device, self.precision):
            out, feats = self.teacher.forward_with_features(lr, self.features)
        self._targets = (
            out[..., m * s : (m + p) * s, m * s : (m + p) * s].float() if self.need_output else None,
            {k: v[..., m : m + p, m : m + p].float() for k, v in feats.items()},
        )
        return lr[..., m : m + p, m : m + p], hr[..., m * si : (m + p) * si, m * si : (m + p) * si]

    def targets(self, params: torch.Tensor) -> Targets:
        return self._targets

    def fill(self, progress=None, should_stop=None) -> bool:
        return True

    def describe(self) -> str:
        return (f"teacher per patch, no cache: each {self.patch}x{self.patch} patch widened by {self.margin} LR "
                f"pixels a side ({self.patch + 2 * self.margin}x{self.patch + 2 * self.margin} through the teacher)")
