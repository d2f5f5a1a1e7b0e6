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
more than `RAM_SHARE` of the available memory), or a folder (one `.npy` per entry, memory-mapped,
reused by later runs of the same teacher, data and scale).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import ConfigError
from ..imaging.imresize import imresize
from ..inference import available_memory
from .data import MARGIN, HRStore

CODES = 8  # dihedral augmentations: v-flip, h-flip, transpose bits
OUTPUT = "output"  # the entry part holding the teacher's image (features keep their own names)
RAM_SHARE = 0.5
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
    """(image, code, top, left): where a sampler draw's LR patch lies in the augmented image's LR."""
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


class TeacherCache:
    """Half-precision teacher targets for every (training image, augmentation), made on first use."""

    def __init__(self, teacher: torch.nn.Module, store: HRStore, scale: int, patch: int,
                 features: Sequence[str], need_output: bool, mode: str, fingerprint: str = ""):
        if not features and not need_output:
            raise ConfigError("--teacher-cache: this recipe uses neither the teacher's output nor its features")
        self.teacher, self.store, self.scale, self.patch = teacher, store, scale, patch
        self.features, self.need_output = tuple(features), need_output
        self.device = store.flat.device
        self.mode = mode
        # (image, code) -> its parts: tensors (ram) or memory maps of the folder's files
        self._entries: Dict[Tuple[int, int], Dict[str, Union[torch.Tensor, np.ndarray]]] = {}
        self.channels = self._probe_channels()
        self.total_bytes = sum(h // scale * (w // scale) for h, w in store.sizes) * CODES * self.bytes_per_lr_pixel
        self.folder: Optional[Path] = None
        if mode == "ram":
            free = available_memory(torch.device("cpu"))
            if self.total_bytes > RAM_SHARE * free:
                raise ConfigError(
                    f"--teacher-cache ram: the full cache takes {self.total_bytes / 2**30:.1f} GiB, more than "
                    f"{RAM_SHARE:.0%} of the {free / 2**30:.1f} GiB available; give a folder "
                    "(--teacher-cache DIR) or fewer features")
        else:
            # One folder per (teacher, data, scale): runs needing other parts of it share what they can.
            key = hashlib.sha256(json.dumps({
                "teacher": teacher_identity(teacher), "data": fingerprint, "scale": scale,
                "files": [f.name for f in store.files],
            }, sort_keys=True).encode()).hexdigest()[:16]
            self.folder = Path(mode).expanduser() / key
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"--teacher-cache {mode}: cannot create the folder ({e.strerror})") from None
        self.made = 0  # entries computed by this process (the rest came from the folder)

    @property
    def bytes_per_lr_pixel(self) -> int:
        out = 3 * self.scale * self.scale if self.need_output else 0
        return 2 * (sum(self.channels.values()) + out)

    def describe(self) -> str:
        where = "in memory" if self.folder is None else f"in {self.folder}"
        return (f"teacher cache {where}: {len(self.store) * CODES} entries, "
                f"{self.total_bytes / 2**30:.2f} GiB when full ({self.bytes_per_lr_pixel} bytes per LR pixel)")

    def _probe_channels(self) -> Dict[str, int]:
        x = torch.full((1, 3, 8, 8), 0.5, device=self.device)
        with torch.no_grad():
            _, feats = self.teacher.forward_with_features(x, self.features)
        return {k: int(v.shape[1]) for k, v in feats.items()}

    # ------------------------------------------------------------------ entries

    def lr_image(self, index: int, code: int) -> torch.Tensor:
        """(1,3,h,w) LR of the augmented HR image, as the sampler's patches are made (uint8 levels)."""
        off, (h, w) = self.store.offsets[index], self.store.sizes[index]
        hr = self.store.flat[off : off + h * w * 3].view(h, w, 3).permute(2, 0, 1)
        s = self.scale
        hr = augment(hr[:, : h // s * s, : w // s * s], code)
        return imresize(hr[None].float().div_(255.0), scale=1.0 / s, quantize_to=1.0)

    def _parts(self) -> List[str]:
        return [*self.features, *([OUTPUT] if self.need_output else [])]

    def _compute(self, index: int, code: int) -> Dict[str, torch.Tensor]:
        """{feature name: (C, h, w), OUTPUT: (3, hs, ws)} in float16 on the CPU."""
        lr = self.lr_image(index, code)
        with torch.no_grad():
            out, feats = self.teacher.forward_with_features(lr, self.features)
        entry = {k: feats[k][0].to("cpu", torch.float16) for k in self.features}
        if self.need_output:
            entry[OUTPUT] = out[0].to("cpu", torch.float16)
        self.made += 1
        return entry

    def entry(self, index: int, code: int) -> Dict[str, Union[torch.Tensor, np.ndarray]]:
        key = (index, code)
        if key not in self._entries:
            self._entries[key] = self._compute(index, code) if self.folder is None else self._from_folder(index, code)
        return self._entries[key]

    def _from_folder(self, index: int, code: int) -> Dict[str, np.ndarray]:
        assert self.folder is not None
        paths = {part: self.folder / f"{index:05d}_{code}_{part}.npy" for part in self._parts()}
        if not all(p.is_file() for p in paths.values()):
            for part, tensor in self._compute(index, code).items():
                atomic_write(paths[part], lambda tmp, a=tensor.numpy(): _save_npy(tmp, a))
        # Memory-mapped once and kept: the OS holds what fits, so a folder cache never runs out
        # of memory, and a step's crops read no file headers.
        return {part: np.load(path, mmap_mode="r") for part, path in paths.items()}

    def fill(self, progress: Optional[Callable[[int, int], None]] = None) -> None:
        """Make every entry now, so that training steps run at their steady speed from the first."""
        total = len(self.store) * CODES
        for n, (index, code) in enumerate((i, c) for i in range(len(self.store)) for c in range(CODES)):
            self.entry(index, code)
            if progress is not None:
                progress(n + 1, total)

    # ------------------------------------------------------------------ batches

    def targets(self, params: torch.Tensor) -> Targets:
        """The teacher's output crops (B,3,Ps,Ps) and feature crops (B,C,P,P) for a sampler draw."""
        p, s = self.patch, self.scale
        crops: Dict[str, List[torch.Tensor]] = {part: [] for part in self._parts()}
        for row in params.cpu():
            index, code, y, x = lr_corner(row, s, p)
            for part, value in self.entry(index, code).items():
                k = s if part == OUTPUT else 1
                crops[part].append(_tensor(value[:, y * k : (y + p) * k, x * k : (x + p) * k]))
        stacked = {part: torch.stack(v).to(self.device) for part, v in crops.items()}
        return stacked.pop(OUTPUT, None), stacked


def _tensor(crop: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    return crop if isinstance(crop, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(crop))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to the temporary name
        np.save(f, array)


def parse_mode(value: Union[str, Path, None]) -> str:
    """`off`, `ram`, or a folder path."""
    text = str(value or "off").strip()
    if not text:
        raise ConfigError("--teacher-cache: give off, ram or a folder")
    return text
