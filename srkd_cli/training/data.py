"""Training and validation data: HR images held once as uint8, patches cut and degraded on the device.

Every HR image is decoded once and kept as uint8 in one flat buffer on the training device.
A batch is one gather from that buffer: the crop, the flips and the 90° rotations are folded
into the gather's index arithmetic, so it costs one kernel however large the batch. The LR
input is made from the HR window with the MATLAB-compatible `imresize` (rounded to 8 bits
after each pass, as MATLAB does for uint8 images), on the same device.

The HR window is cut with a margin of `MARGIN` LR pixels, mirrored where it leaves the image
exactly as MATLAB's `imresize` mirrors at the borders, and only the interior is kept: the LR
patch is then the patch of the LR image of the whole HR image, as in the benchmarks, not a
resize of the patch with its own borders.

All randomness comes from one CPU `torch.Generator`, so the stream of patches is the same
on every device and its state can be saved and restored for a bit-exact resume.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import ConfigError
from ..imaging.imresize import imresize
from ..imaging.io import IMAGE_SUFFIXES, read_uint8
from ..imaging.io import list_images as _list_images

# MATLAB's antialiased cubic kernel reaches 2 LR pixels out: with this margin the interior
# of a window's LR equals the LR of the whole image.
MARGIN = 2

PathLike = Union[str, Path]


def list_images(folder: PathLike) -> List[Path]:
    """Image files under `folder` (recursively), sorted so every run sees the same order:
    `imaging.io.list_images` with errors that name --data."""
    folder = Path(folder)
    if not folder.exists():
        raise ConfigError(f"--data {folder}: no such folder")
    if not folder.is_dir():
        raise ConfigError(f"--data {folder}: not a folder")
    files = _list_images(folder, recursive=True)
    if not files:
        raise ConfigError(f"--data {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    return files


def read_rgb_uint8(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB (gray repeated, alpha dropped, 16 bits rounded to 8, EXIF orientation applied)."""
    arr = read_uint8(path)
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def data_fingerprint(folders: Sequence[PathLike]) -> str:
    """sha256 over each image's path (relative to its folder, with the folder's name) and size."""
    h = hashlib.sha256()
    for folder in folders:
        folder = Path(folder)
        for p in list_images(folder):
            h.update(f"{folder.name}/{p.relative_to(folder).as_posix()}\t{p.stat().st_size}\n".encode())
    return h.hexdigest()


@dataclass
class HRStore:
    """All HR images as one flat uint8 buffer (HWC order per image) on one device."""

    flat: torch.Tensor
    offsets: List[int]
    sizes: List[Tuple[int, int]]
    files: List[Path]
    skipped: List[Path]

    def __len__(self) -> int:
        return len(self.sizes)


def training_files(folders: Sequence[PathLike]) -> List[Path]:
    """Every image under the --data folders, in the order every run sees them."""
    return [f for folder in folders for f in list_images(folder)]


def held_out(files: Sequence[Path], n: int) -> List[Path]:
    """`n` files spread evenly over `files` (so every --data folder gives its share), the same
    for every seed and run: arms compared on one slice are compared on the same images."""
    if n <= 0:
        return []
    if n >= len(files):
        raise ConfigError(f"--val-split {n}: the --data folders hold only {len(files)} images; hold out fewer")
    return [files[int((i + 0.5) * len(files) / n)] for i in range(n)]


def load_hr_store(
    folders: Sequence[PathLike], min_size: int = 1, device: Union[str, torch.device] = "cpu", threads: int = 0,
    exclude: Sequence[Path] = (),
) -> HRStore:
    """Decode every image under `folders` but `exclude`; images whose short side is below `min_size` are skipped."""
    left_out = set(exclude)
    files = [f for f in training_files(folders) if f not in left_out]
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes without the GIL
        arrays = list(pool.map(read_rgb_uint8, files))
    kept = [(f, a) for f, a in zip(files, arrays) if min(a.shape[:2]) >= min_size]
    skipped = [f for f, a in zip(files, arrays) if min(a.shape[:2]) < min_size]
    if not kept:
        names = " ".join(f"--data {f}" for f in folders)
        raise ConfigError(f"{names}: no image is at least {min_size}x{min_size} pixels (lower --patch)")
    total = sum(a.size for _, a in kept)
    flat = torch.empty(total, dtype=torch.uint8)
    offsets, sizes, pos = [], [], 0
    for _, a in kept:
        flat[pos : pos + a.size] = torch.from_numpy(np.ascontiguousarray(a).reshape(-1))
        offsets.append(pos)
        sizes.append((a.shape[0], a.shape[1]))
        pos += a.size
    return HRStore(flat.to(device), offsets, sizes, [f for f, _ in kept], skipped)


class PatchSampler:
    """Random (LR, HR) training batches: aligned crops, dihedral augmentation, MATLAB bicubic LR.

    `next()` returns LR (B,3,patch,patch) and HR (B,3,patch*scale,patch*scale) float32 in [0,1]
    on the store's device. The sampling state (`state_dict`) is the generator state alone.
    """

    def __init__(self, store: HRStore, scale: int, patch: int, batch: int, seed: int, augment: bool = True):
        self.store, self.scale, self.patch, self.batch, self.augment = store, scale, patch, batch, augment
        self.device = store.flat.device
        self.generator = torch.Generator().manual_seed(seed)
        s = scale
        # LR-grid geometry of each image cropped to a multiple of the scale.
        lr_h = torch.tensor([h // s for h, _ in store.sizes], dtype=torch.int64)
        lr_w = torch.tensor([w // s for _, w in store.sizes], dtype=torch.int64)
        if int((lr_h < patch).sum()) or int((lr_w < patch).sum()):
            raise ConfigError(f"--patch {patch}: some images are smaller than {patch * s} pixels at x{s}")
        self._room_h, self._room_w = lr_h - patch + 1, lr_w - patch + 1
        # Choosing images in proportion to their crop positions makes every patch equally likely.
        self._weights = (self._room_h * self._room_w).double()
        self._table = torch.stack(
            [
                torch.tensor(store.offsets, dtype=torch.int64),
                torch.tensor([w for _, w in store.sizes], dtype=torch.int64),
                lr_h * s,
                lr_w * s,
            ],
            dim=1,
        )
        self.window = (patch + 2 * MARGIN) * s
        self._k = torch.arange(self.window, device=self.device)
        self._chan = torch.arange(3, device=self.device).view(1, 3, 1, 1)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def draw(self) -> torch.Tensor:
        """(B, 8) int64 on the CPU: offset, stored width, cropped H, cropped W, window top, left, dihedral
        code, image index."""
        g, b, s = self.generator, self.batch, self.scale
        idx = torch.multinomial(self._weights, b, replacement=True, generator=g)
        u = torch.rand(b, 2, generator=g, dtype=torch.float64)
        top = (u[:, 0] * self._room_h[idx]).floor().long().clamp_max(self._room_h[idx] - 1)
        left = (u[:, 1] * self._room_w[idx]).floor().long().clamp_max(self._room_w[idx] - 1)
        code = torch.randint(0, 8, (b,), generator=g) if self.augment else torch.zeros(b, dtype=torch.int64)
        corner = [((top - MARGIN) * s)[:, None], ((left - MARGIN) * s)[:, None], code[:, None], idx[:, None]]
        return torch.cat([self._table[idx], *corner], 1)

    def gather(self, params: torch.Tensor) -> torch.Tensor:
        """The HR windows (B,3,n,n) uint8 that `params` describe, mirrored at the image borders."""
        off, stride, hc, wc, top, left, code = (params[:, i : i + 1] for i in range(7))
        n, k = self.window, self._k
        vflip, hflip, transpose = code & 1, (code >> 1) & 1, (code >> 2) & 1
        rows = _mirror(top + torch.where(vflip.bool(), n - 1 - k, k), hc)
        cols = _mirror(left + torch.where(hflip.bool(), n - 1 - k, k), wc)
        straight = rows[:, :, None] * stride[:, :, None] + cols[:, None, :]
        turned = rows[:, None, :] * stride[:, :, None] + cols[:, :, None]
        pix = torch.where(transpose[:, :, None].bool(), turned, straight)
        index = off[:, :, None, None] + pix[:, None] * 3 + self._chan
        return self.store.flat[index]

    def next(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The next batch; `last_params` keeps its draw (the teacher cache crops at the same place)."""
        params = self.last_params = self.draw()
        if self.device.type == "cuda":
            params = params.pin_memory().to(self.device, non_blocking=True)
        window = self.gather(params).float().div_(255.0)
        return degrade(window, self.scale, self.patch)


def degrade(window: torch.Tensor, scale: int, patch: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """HR windows with a MARGIN-pixel (LR) rim -> (LR interior, HR interior).

    Scale 1 (`srkd distill --teacher-only`): the window's interior is the input as it is."""
    m, ms = MARGIN, MARGIN * scale
    if scale == 1:
        inner = window[..., m : m + patch, m : m + patch]
        return inner, inner
    lr = imresize(window, scale=1.0 / scale, quantize_to=1.0)
    return lr[..., m : m + patch, m : m + patch], window[..., ms : ms + patch * scale, ms : ms + patch * scale]


def _mirror(i: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Reflect indices into [0, n) with the edge pixel repeated (MATLAB's 'symmetric'); |overshoot| <= n."""
    i = torch.where(i < 0, -i - 1, i)
    return torch.where(i >= n, 2 * n - 1 - i, i)


@dataclass
class ValImage:
    name: str
    lr: torch.Tensor  # (1,3,h,w) float in [0,1], CPU
    hr: np.ndarray  # (s*h, s*w, 3) uint8


def _val_image(stem: str, hr: np.ndarray, lr: np.ndarray) -> ValImage:
    from ..evaluate import to_tensor

    hr = hr if hr.ndim == 3 else np.repeat(hr[..., None], 3, axis=2)
    lr = lr if lr.ndim == 3 else np.repeat(lr[..., None], 3, axis=2)
    return ValImage(stem, to_tensor(lr).float(), np.ascontiguousarray(hr))


def load_val_set(folder: PathLike, scale: int) -> List[ValImage]:
    """Validation pairs read by the evaluation protocol's own loader (`evaluate.load_pairs`)."""
    from ..evaluate import load_pairs

    return [_val_image(pair.stem, pair.hr, pair.lr) for pair in load_pairs(Path(folder), scale)]


def load_held_out(files: Sequence[Path], scale: int) -> List[ValImage]:
    """Held-out training images as validation pairs: cropped to the scale, LR by the protocol's bicubic."""
    from ..imaging.imresize import bicubic_downscale_uint8

    out = []
    for f in files:
        hr = read_rgb_uint8(f)
        hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
        out.append(_val_image(f.stem, hr, bicubic_downscale_uint8(hr, scale)))
    return out


def check_disjoint(train_files: Sequence[Path], val_folders: Sequence[PathLike]) -> Optional[str]:
    """A warning when a validation image file also lies in the training folders."""
    train = {p.resolve() for p in train_files}
    for v in val_folders:
        for p in Path(v).rglob("*"):
            if p.resolve() in train:
                return f"--val {v} and --data overlap ({p.name}): validation scores will be optimistic"
    return None
