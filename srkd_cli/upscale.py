"""Batch upscaling: which files, where their outputs go, and running each one safely.

A bad file is reported and skipped; the rest are done. Outputs are planned before any
work so that an input is never overwritten and two inputs never write the same file.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .errors import ConfigError, InputError, OutputError, SrkdError
from .imaging.imresize import imresize
from .imaging.io import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, PNG_COMPRESSION, Image, find_images, read_image, write_image
from .inference import Upscaler

FORMAT_SUFFIX = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp", "tif": ".tif", "tiff": ".tif", "bmp": ".bmp"}
SUFFIX_FORMAT = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp", ".tif": "tif", ".tiff": "tif", ".bmp": "bmp"}
ALPHA_MODES = ("model", "bicubic")
WEBP_MAX_SIDE = 16383  # the WebP format cannot hold a longer side


@dataclass
class OutputOptions:
    output: Optional[Path] = None  # a file (one input) or a folder; None: beside each input
    suffix: Optional[str] = None  # None: "_x{scale}"
    format: Optional[str] = None  # None: the input's own format (or the -o file's suffix)
    quality: int = 95
    overwrite: bool = False
    png_compression: int = PNG_COMPRESSION  # zlib level 0-9


@dataclass
class Job:
    input: Path
    output: Path


@dataclass
class FileResult:
    input: str
    output: Optional[str]
    ok: bool
    size_in: Optional[Tuple[int, int]] = None  # (width, height)
    size_out: Optional[Tuple[int, int]] = None
    seconds: float = 0.0
    error: Optional[str] = None
    rank: int = 0  # the torchrun rank that did it

    def to_dict(self) -> Dict:
        return asdict(self)


def collect_inputs(inputs: Sequence[str], recursive: bool) -> Tuple[List[Tuple[Path, Path]], List[FileResult]]:
    """(file, its path relative to the folder it was found in) for files, folders and globs,
    and a failed result for each argument that names no usable image (the others still run)."""
    found: Dict[Path, Tuple[Path, Path]] = {}
    failed: List[FileResult] = []
    for arg in inputs:
        p = Path(arg).expanduser()
        try:
            images = find_images([p if p.exists() else arg], recursive=recursive)
        except InputError as e:
            failed.append(FileResult(str(arg), None, False, error=str(e)))
            continue
        for f in images:
            found.setdefault(f.resolve(), (f, f.relative_to(p) if p.is_dir() else Path(f.name)))
    if not found and not failed:
        raise InputError(f"no images found in {' '.join(inputs)}")
    return list(found.values()), failed


def _suffix_for(fmt: Optional[str], fallback: str) -> str:
    if fmt is None:
        return fallback.lower() if fallback.lower() in IMAGE_SUFFIXES else ".png"
    key = fmt.lower().lstrip(".")
    if key not in FORMAT_SUFFIX:
        raise ConfigError(f"--format {fmt}: choose png, jpg, webp, tif or bmp")
    return FORMAT_SUFFIX[key]


def plan_jobs(files: List[Tuple[Path, Path]], opts: OutputOptions, scale: int) -> Tuple[List[Job], List[FileResult]]:
    """Where each input's output goes; conflicts become failed results, never silent overwrites.

    `-o` with an image suffix (and not an existing folder) names the output file of a single
    input; otherwise it is a folder, and folder inputs keep their sub-folder structure in it.
    """
    out = opts.output
    names_file = out is not None and not out.is_dir() and out.suffix.lower() in IMAGE_SUFFIXES
    if opts.format:
        _suffix_for(opts.format, ".png")  # validates it
    if names_file:
        if len(files) > 1:
            raise ConfigError(f"-o {out}: names one file, but there are {len(files)} inputs (give a folder)")
        if opts.format and SUFFIX_FORMAT[out.suffix.lower()] != SUFFIX_FORMAT[_suffix_for(opts.format, "")]:
            raise ConfigError(f"-o {out} and --format {opts.format} disagree (drop one or make them match)")
    suffix = f"_x{scale}" if opts.suffix is None else opts.suffix
    jobs, failed, taken = [], [], {}
    inputs = {f.resolve() for f, _ in files}
    for f, rel in files:
        if names_file:
            target = out
        else:
            ext = _suffix_for(opts.format, f.suffix)
            folder = f.parent if out is None else out / rel.parent
            target = folder / f"{f.stem}{suffix}{ext}"
        key = target.resolve()
        if key in inputs:
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: would overwrite an input (use another -o or --suffix)"))
        elif key in taken:
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: also the output of {taken[key]}"))
        elif target.is_dir():
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: is a folder"))
        elif target.exists() and not opts.overwrite:
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: already exists (use --overwrite)"))
        else:
            taken[key] = f
            jobs.append(Job(f, target))
    return jobs, failed


def upscale_image(upscaler: Upscaler, img: Image, alpha_mode: str = "model") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Upscale the colour (or grey) pixels with the model, and the alpha channel as asked.

    An alpha channel that is fully opaque stays exactly opaque whatever the mode.
    """
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


def _output_format(job: Job, opts: OutputOptions) -> str:
    return SUFFIX_FORMAT.get(job.output.suffix.lower(), "png") if opts.format is None else SUFFIX_FORMAT[_suffix_for(opts.format, "")]


def _one(job: Job, upscaler: Upscaler, opts: OutputOptions, alpha_mode: str, max_pixels: int, res: FileResult) -> None:
    img = read_image(job.input, max_pixels=max_pixels)
    w, h = img.size
    s = upscaler.scale
    res.size_in = (w, h)
    if _output_format(job, opts) == "webp" and max(w, h) * s > WEBP_MAX_SIDE:
        raise OutputError(f"{job.output}: WebP holds at most {WEBP_MAX_SIDE} pixels a side, the x{s} output "
                          f"is {w * s}x{h * s} (use --format png)")
    rgb, alpha = upscale_image(upscaler, img, alpha_mode)
    img.rgb = img.alpha = None  # the input's pixels are not needed for writing: free them early
    write_image(
        job.output, rgb, alpha, bit_depth=img.bit_depth, icc_profile=img.icc_profile, exif=img.exif,
        format=opts.format, quality=opts.quality, overwrite=opts.overwrite, png_compression=opts.png_compression,
    )
    res.size_out = (rgb.shape[3], rgb.shape[2])
    res.ok = True


def run_jobs(
    jobs: List[Job],
    upscaler: Upscaler,
    opts: OutputOptions,
    alpha_mode: str = "model",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_done: Optional[Callable[[FileResult], None]] = None,
    rank: int = 0,
) -> List[FileResult]:
    """Upscale each job's file; a failure is recorded with one line and the batch goes on."""
    results = []
    for job in jobs:
        t0 = time.perf_counter()
        res = FileResult(str(job.input), str(job.output), False, rank=rank)
        try:
            _one(job, upscaler, opts, alpha_mode, max_pixels, res)
        except SrkdError as e:
            msg = str(e)
            res.error = msg if msg.startswith(str(job.input)) or msg.startswith(str(job.output)) else f"{job.input}: {msg}"
        except MemoryError:
            res.error = f"{job.input}: out of memory (try a smaller --tile)"
        except Exception as e:  # a bug, not the file's fault; the batch still goes on
            if os.environ.get("SRKD_DEBUG"):
                traceback.print_exc()
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            res.error = f"{job.input}: internal error: {type(e).__name__}: {first} (set SRKD_DEBUG=1 for the traceback)"
        res.seconds = round(time.perf_counter() - t0, 4)
        results.append(res)
        if on_done:
            on_done(res)
    return results
