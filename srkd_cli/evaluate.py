"""The evaluation protocol: benchmark folders, (LR, HR) pairs, and result records.

A benchmark folder has the EDSR layout: `HR/{stem}.png` and, optionally,
`LR_bicubic/X{s}/{stem}x{s}.png`. HR is cropped to a multiple of the scale; a missing
LR is made from it with the MATLAB-exact imresize. Output is rounded to uint8 once
(`metrics.to_uint8`) and scored on Y and RGB with a border crop of `scale` (SPEC §3).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from PIL import Image as PILImage

from .atomic import atomic_write
from .errors import InputError
from .imaging.imresize import bicubic_downscale_uint8, imresize
from .imaging.io import IMAGE_SUFFIXES, list_images, read_uint8, unit_samples
from .metrics import psnr, ssim, to_uint8

UpscaleFn = Callable[[torch.Tensor], torch.Tensor]  # (1,C,h,w) [0,1] -> (1,C,sh,sw)


@dataclass
class Pair:
    stem: str
    hr: np.ndarray  # HxW or HxWxC uint8, cropped to a multiple of the scale
    lr: np.ndarray


@dataclass
class EvalRecord:
    model: str
    scale: int
    dataset: str
    n_images: int
    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    ssim_rgb: float
    seconds: float
    per_image: List[Dict[str, float]] = field(default_factory=list)

    def to_dict(self, per_image: bool = False) -> Dict:
        d = asdict(self)
        if not per_image:
            d.pop("per_image")
        return d


def hr_folder(folder: Path) -> Path:
    """Where a benchmark folder keeps its HR images: HR/ in the EDSR layout (beside
    LR_bicubic/); a plain folder of HR images is its own."""
    folder = Path(folder)
    return folder / "HR" if (folder / "HR").is_dir() else folder


def load_pairs(folder: Path, scale: int) -> List[Pair]:
    """Every (LR, HR) pair of a benchmark folder, with the checks the protocol needs.

    RGBA/LA images lose alpha, 16-bit images are rounded to 8 bits (`imaging.io.read_uint8`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    hr_dir = hr_folder(folder)
    hr_files = list_images(hr_dir)
    if not hr_files:
        raise InputError(f"{hr_dir}: no images (expected HR/ with images, and optionally LR_bicubic/X{scale}/)")
    lr_dir = folder / "LR_bicubic" / f"X{scale}"
    pairs = []
    for hp in hr_files:
        hr = read_uint8(hp)
        h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
        if h == 0 or w == 0:
            raise InputError(f"{hp}: smaller than the scale x{scale}")
        hr = hr[:h, :w]
        lp = next((lr_dir / f"{hp.stem}x{scale}{suf}" for suf in (hp.suffix, ".png") if (lr_dir / f"{hp.stem}x{scale}{suf}").is_file()), None)
        if lp is None:
            lr = bicubic_downscale_uint8(hr, scale)
        else:
            lr = read_uint8(lp)
            if lr.shape[:2] != (h // scale, w // scale):
                raise InputError(
                    f"{lp}: is {lr.shape[1]}x{lr.shape[0]}, but HR {hp.name} / {scale} is {w // scale}x{h // scale}"
                )
            if lr.ndim != hr.ndim:  # a grey image counts as R = G = B (metrics): colour for an RGB HR
                lr = np.repeat(lr[..., None], 3, axis=2) if lr.ndim == 2 else lr[..., 0]
        pairs.append(Pair(hp.stem, hr, lr))
    return pairs


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """HxW or HxWxC uint8 -> (1,C,H,W) float64 in [0,1]."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
    return t[None].double() / 255.0


def as_read(lr: torch.Tensor) -> torch.Tensor:
    """A `to_tensor` image as `imaging.io.read_image` makes the same pixels (float32, x 1/255):
    half of the 256 levels differ in the last bit, enough to move a few output pixels a grey
    level, so a model scored on this sees exactly what `srkd upscale` feeds it."""
    return unit_samples(lr[0].permute(1, 2, 0).mul(255).round_().to(torch.uint8).numpy())


def bicubic_upscaler(scale: int) -> UpscaleFn:
    """The baseline: MATLAB-style bicubic enlargement in float64."""
    return lambda x: imresize(x.double(), scale=scale)


def score(sr: np.ndarray, hr: np.ndarray, scale: int) -> Dict[str, float]:
    if sr.ndim == 3 and sr.shape[2] == 1:
        sr = sr[..., 0]
    return {
        "psnr_y": psnr(sr, hr, scale, True),
        "ssim_y": ssim(sr, hr, scale, True),
        "psnr_rgb": psnr(sr, hr, scale, False),
        "ssim_rgb": ssim(sr, hr, scale, False),
    }


def _find_sr(sr_dir: Path, stem: str, scale: int) -> Path:
    for name in (stem, f"{stem}x{scale}", f"{stem}_x{scale}", f"{stem}_SR", f"{stem}_sr"):
        for p in sr_dir.glob(f"{name}.*"):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                return p
    raise InputError(f"{sr_dir}: no image named like HR {stem} (e.g. {stem}.png)")


def evaluate_folder(
    upscale: Optional[UpscaleFn],
    model_name: str,
    folder: Path,
    scale: int,
    *,
    pairs: Optional[List[Pair]] = None,
    sr_dir: Optional[Path] = None,
    save_dir: Optional[Path] = None,
) -> EvalRecord:
    """Score a model (or, with `sr_dir`, another tool's outputs) on one benchmark folder."""
    folder = Path(folder)
    pairs = pairs if pairs is not None else load_pairs(folder, scale)
    per_image, seconds = [], 0.0
    for pair in pairs:
        if sr_dir is not None:
            sp = _find_sr(Path(sr_dir), pair.stem, scale)
            sr = read_uint8(sp)
            if sr.shape[:2] != pair.hr.shape[:2]:
                h, w = pair.hr.shape[:2]
                if sr.shape[0] >= h and sr.shape[1] >= w and sr.shape[0] - h < scale and sr.shape[1] - w < scale:
                    sr = sr[:h, :w]  # the tool upscaled the uncropped HR size
                else:
                    raise InputError(f"{sp}: is {sr.shape[1]}x{sr.shape[0]}, HR {pair.stem} is {w}x{h}")
            if sr.ndim == 2 and pair.hr.ndim == 3:  # grey counts as R = G = B, as in the metrics
                sr = np.repeat(sr[..., None], 3, axis=2)
            if sr.ndim == 3 and pair.hr.ndim == 2:
                sr = sr[..., 0] if (sr[..., 0] == sr[..., 1]).all() else np.asarray(PILImage.fromarray(sr).convert("L"))
        else:
            t0 = time.perf_counter()
            out = upscale(to_tensor(pair.lr))
            sr = to_uint8(out)
            seconds += time.perf_counter() - t0
            if save_dir is not None:
                im = PILImage.fromarray(sr[..., 0] if sr.shape[2] == 1 else sr)
                atomic_write(save_dir / f"{pair.stem}.png", lambda tmp: im.save(tmp, format="PNG"))
        per_image.append({"image": pair.stem, **score(sr, pair.hr, scale)})
    mean = {k: float(np.mean([p[k] for p in per_image])) for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")}
    return EvalRecord(model_name, scale, folder.name, len(per_image), seconds=round(seconds, 4), per_image=per_image, **mean)
