"""`srkd distill --teacher-only`: distillation with no HR images.

The training images are the student's inputs as they are (patches cut from them, never
downscaled), and the teacher's output on the same input is the only target. So any folder of
photos is training data, and the student learns what the teacher does to real images (noise,
JPEG artefacts, whatever the teacher was trained for), not what bicubic downscaling undoes.

Validation in this mode scores the student against the teacher, not against ground truth:
each validation image (`--val` folders, `HR/` inside an EDSR-layout folder; or the
`--val-split` images held out of `--data`) is centre-cropped to at most `VAL_SIDE` pixels a side,
given to the teacher once (float32) and to the student at every validation, and the score is
the PSNR-Y of the student's output against the teacher's, both rounded to 8 bits, border `scale`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..imaging.io import list_images
from ..metrics import to_uint8
from .data import ValImage, read_rgb_uint8

VAL_SIDE = 128  # input pixels: the teacher and the student see the centre crop of each validation image


def val_inputs(folder: Path) -> List[Path]:
    """The images of a --val folder used as inputs: `HR/` of an EDSR-layout folder, else every image."""
    folder = Path(folder)
    root = folder / "HR" if (folder / "HR").is_dir() else folder
    files = list_images(root, recursive=True)
    if not files:
        raise ConfigError(f"--val {folder}: no images in this folder")
    return files


def centre_crop(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return img[top : top + side, left : left + side]


@torch.no_grad()
def teacher_val_set(files: Sequence[Path], teacher: torch.nn.Module, side: int = VAL_SIDE) -> List[ValImage]:
    """(input, teacher's 8-bit output) pairs: what the student is scored against under --teacher-only."""
    p = next(teacher.parameters())
    out = []
    for f in files:
        img = np.ascontiguousarray(centre_crop(read_rgb_uint8(f), side))
        lr = torch.from_numpy(img).permute(2, 0, 1)[None].float().div_(255.0)
        answer = teacher(lr.to(device=p.device, dtype=p.dtype)).float().cpu()
        out.append(ValImage(f.stem, lr, to_uint8(answer)))
    return out


__all__ = ["VAL_SIDE", "centre_crop", "teacher_val_set", "val_inputs"]
