"""Batch upscaling: which files, where their outputs go, and running each one safely.

A bad file is reported and skipped; the rest are done. Outputs are planned before any
work so that an input is never overwritten and two inputs never write the same file.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .errors import ConfigError, InputError, SrkdError
from .imaging.imresize import imresize
from .imaging.io import DEFAULT_MAX_PIXELS, Image, find_images, read_image, write_image
from .inference import Upscaler

FORMAT_SUFFIX = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp", "tif": ".tif", "tiff": ".tif", "bmp": ".bmp"}
ALPHA_MODES = ("model", "bicubic")


@dataclass
class OutputOptions:
    output: Optional[Path] = None  # a file (one input) or a folder; None: beside each input
    suffix: Optional[str] = None  # None: "_x{scale}"
    format: Optional[str] = None  # None: the input's own format (or the -o file's suffix)
    quality: int = 95
    overwrite: bool = False


@dataclass
class Job:
    input: Path
    output: Path


@dataclass
class FileResult:
    input: str
    output: str
    ok: bool
    size_in: Optional[Tuple[int, int]] = None  # (width, height)
    size_out: Optional[Tuple[int, int]] = None
    seconds: float = 0.0
    error: Optional[str] = None

    def to_dict(self) -> Dict:
        return asdict(self)


def collect_inputs(inputs: Sequence[str], recursive: bool) -> List[Tuple[Path, Path]]:
    """(file, path relative to the folder it was found in) for files, folders and globs."""
    found: Dict[Path, Path] = {}
    for arg in inputs:
        p = Path(arg).expanduser()
        if p.is_dir():
            for f in find_images([p], recursive=recursive):
                found.setdefault(f, f.relative_to(p))
        else:
            for f in find_images([arg], recursive=recursive):
                found.setdefault(f, Path(f.name))
    if not found:
        raise InputError(f"no images found in {' '.join(inputs)}")
    return list(found.items())


def _suffix_for(fmt: Optional[str], fallback: str) -> str:
    if fmt is None:
        return fallback.lower() if fallback.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"} else ".png"
    key = fmt.lower().lstrip(".")
    if key not in FORMAT_SUFFIX:
        raise ConfigError(f"--format {fmt}: choose png, jpg, webp, tif or bmp")
    return FORMAT_SUFFIX[key]


def plan_jobs(files: List[Tuple[Path, Path]], opts: OutputOptions, scale: int) -> Tuple[List[Job], List[FileResult]]:
    """Where each input's output goes; conflicts become failed results, never silent overwrites."""
    out = opts.output
    single_file = (
        out is not None and len(files) == 1 and not out.is_dir() and out.suffix.lower() in set(FORMAT_SUFFIX.values()) | {".jpeg", ".tiff"}
    )
    suffix = f"_x{scale}" if opts.suffix is None else opts.suffix
    jobs, failed, taken = [], [], {}
    inputs = {f.resolve() for f, _ in files}
    for f, rel in files:
        if single_file:
            target = out
            if opts.format:
                _suffix_for(opts.format, target.suffix)  # validates the name
        else:
            ext = _suffix_for(opts.format, f.suffix)
            folder = f.parent if out is None else out / rel.parent
            target = folder / f"{f.stem}{suffix}{ext}"
        key = target.resolve()
        if key in inputs:
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: would overwrite an input (use another -o or --suffix)"))
        elif key in taken:
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: also the output of {taken[key]}"))
        elif target.exists() and not opts.overwrite:
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: already exists (use --overwrite)"))
        else:
            taken[key] = f
            jobs.append(Job(f, target))
    return jobs, failed


def upscale_image(upscaler: Upscaler, img: Image, alpha_mode: str = "model") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Upscale the colour (or grey) pixels with the model, and the alpha channel as asked."""
    if alpha_mode not in ALPHA_MODES:
        raise ConfigError(f"--alpha {alpha_mode}: choose model or bicubic")
    rgb = upscaler(img.rgb)
    alpha = img.alpha
    if alpha is not None:
        s = upscaler.scale
        if bool((alpha >= 1).all()):
            alpha = torch.ones(1, 1, alpha.shape[2] * s, alpha.shape[3] * s)
        elif alpha_mode == "model":
            alpha = upscaler(alpha)
        else:
            alpha = imresize(alpha.float(), scale=s).clamp_(0, 1)
    return rgb.cpu(), None if alpha is None else alpha.cpu()


def run_jobs(
    jobs: List[Job],
    upscaler: Upscaler,
    opts: OutputOptions,
    alpha_mode: str = "model",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_done: Optional[Callable[[FileResult], None]] = None,
) -> List[FileResult]:
    """Upscale each job's file; a failure is recorded and the batch goes on."""
    results = []
    for job in jobs:
        t0 = time.perf_counter()
        res = FileResult(str(job.input), str(job.output), False)
        try:
            img = read_image(job.input, max_pixels=max_pixels)
            res.size_in = (img.rgb.shape[3], img.rgb.shape[2])
            rgb, alpha = upscale_image(upscaler, img, alpha_mode)
            write_image(
                job.output, rgb, alpha, bit_depth=img.bit_depth, icc_profile=img.icc_profile, exif=img.exif,
                format=opts.format, quality=opts.quality, overwrite=opts.overwrite,
            )
            res.size_out = (rgb.shape[3], rgb.shape[2])
            res.ok = True
        except SrkdError as e:
            res.error = str(e)
        except (RuntimeError, MemoryError) as e:  # e.g. out of memory even at the smallest tile
            res.error = f"{job.input}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        res.seconds = round(time.perf_counter() - t0, 4)
        results.append(res)
        if on_done:
            on_done(res)
    return results
