"""Batch upscaling: running each planned file safely (the plan is upscale_plan.py).

A bad file is reported and skipped; the rest are done.
`upscale_files(UpscaleRequest(...))` is the whole of `srkd upscale` as a call: under torchrun
every rank loads the model, rank 0 plans the outputs and hands each rank its share of the
files (round robin), and rank 0 gathers every result.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image as PILImage

from .atomic import check_report, remove_stale_temps, write_report
from .backends import build_upscaler
from .checkpoint import LoadedModel
from .config import SCALES, or_list
from .distributed import DistEnv, dist_env, gather_objects, init_process_group, rank_device, shutdown
from .errors import ConfigError, OutputError, SrkdError
from .imaging.imresize import imresize
from .imaging.io import DEFAULT_MAX_PIXELS, PNG_COMPRESSION, Image, encode_image, probe_image, read_image, write_image
from .inference import Upscaler, pick_device
from .loader import load_model
from .upscale_plan import (STDOUT, SUFFIX_FORMAT, FileResult, Inputs, Job, OutputOptions, _suffix_for,  # noqa: F401
                          check_suffix, collect_inputs, output_kind, plan_jobs)

ALPHA_MODES = ("model", "bicubic")
WEBP_MAX_SIDE = 16383  # the WebP format cannot hold a longer side


def upscale_image(upscaler: Upscaler, img: Image, alpha_mode: str = "model") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Upscale the colour (or grey) pixels with the model, and the alpha channel as asked.

    An alpha channel that is fully opaque (or fully transparent) stays exactly so whatever the
    mode: a model's output of a flat plane rings at its borders (alpha 1-3 of 255).
    """
    if alpha_mode not in ALPHA_MODES:
        raise ConfigError(f"--alpha {alpha_mode}: choose model or bicubic")
    rgb = upscaler(img.rgb)
    alpha = img.alpha
    if alpha is not None:
        s = upscaler.scale
        if bool((alpha >= 1).all()) or bool((alpha <= 0).all()):
            alpha = torch.full((1, 1, alpha.shape[2] * s, alpha.shape[3] * s), float(alpha.flatten()[0] >= 1))
        elif alpha_mode == "model":
            alpha = upscaler(alpha)
        else:
            alpha = imresize(alpha.float(), scale=s).clamp_(0, 1)
    return rgb.cpu(), None if alpha is None else alpha.cpu()


def output_format(job: Job, opts: OutputOptions) -> str:
    """The format key (png, jpg, ...) a job's output is written in."""
    return SUFFIX_FORMAT.get(job.output.suffix.lower(), "png") if opts.format is None else SUFFIX_FORMAT[_suffix_for(opts.format, "")]


def resample(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(1, C, H, W) in [0, 1] -> (1, C, height, width) with Pillow's Lanczos (antialiased when
    shrinking), one plane at a time: Real-ESRGAN's non-integer --outscale, done the same way."""
    planes = []
    for plane in x[0]:
        im = PILImage.fromarray(plane.numpy(), "F").resize((width, height), PILImage.Resampling.LANCZOS)
        planes.append(torch.from_numpy(np.asarray(im, dtype=np.float32).copy()))
    return torch.stack(planes)[None].clamp_(0, 1)  # Lanczos rings a little past the range


def final_size(width: int, height: int, scale: int, outscale: Optional[float]) -> Tuple[int, int]:
    """(width, height) of the output; a non-integer scale rounds down, as Real-ESRGAN does."""
    if outscale is None:
        return width * scale, height * scale
    return max(1, int(width * outscale)), max(1, int(height * outscale))


def _one(job: Job, upscaler: Upscaler, opts: OutputOptions, alpha_mode: str, max_pixels: int, res: FileResult,
         on_write: Optional[Callable[[Job, int], None]] = None) -> None:
    head = probe_image(job.input, max_pixels)
    s = upscaler.scale
    out_w, out_h = final_size(head.width, head.height, s, opts.outscale)
    if output_format(job, opts) == "webp" and max(out_w, out_h) > WEBP_MAX_SIDE:
        raise OutputError(f"{job.output}: WebP holds at most {WEBP_MAX_SIDE} pixels a side, the x{opts.outscale or s:g} "
                          f"output is {out_w}x{out_h} (use --format png)")
    upscaler.check_room(head.height, head.width, head.channels)  # from the header: nothing decoded yet
    if head.frames > 1:
        what = "pages" if head.format == "TIFF" else "frames"
        upscaler.warn(f"{job.shown}: {head.frames} {what}; only the first is upscaled ({what} 2-{head.frames} are dropped)")
    img = read_image(job.input, max_pixels=max_pixels)
    w, h = img.size
    res.size_in = (w, h)
    rgb, alpha = upscale_image(upscaler, img, alpha_mode)
    img.rgb = img.alpha = None  # the input's pixels are not needed for writing: free them early
    if opts.outscale is not None:
        out_w, out_h = final_size(w, h, s, opts.outscale)  # w, h after EXIF orientation
        rgb = resample(rgb, out_h, out_w)
        alpha = None if alpha is None else resample(alpha, out_h, out_w)
    if on_write:
        on_write(job, rgb.shape[2] * rgb.shape[3])
    meta = dict(bit_depth=img.bit_depth, icc_profile=img.icc_profile, exif=img.exif, quality=opts.quality,
                png_compression=opts.png_compression)
    if job.output == STDOUT:
        _to_stdout(encode_image(rgb, alpha, format=opts.format, **meta))
    else:
        write_image(job.output, rgb, alpha, format=opts.format, overwrite=opts.overwrite, **meta)
    res.size_out = (rgb.shape[3], rgb.shape[2])
    res.ok = True


def _to_stdout(data: bytes) -> None:
    out = sys.stdout.buffer
    try:
        out.write(data)
        out.flush()
    except BrokenPipeError:
        # The reader left: keep Python's exit-time flush from failing on the closed pipe too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OutputError("-: cannot write to stdout (the reading end of the pipe closed)") from None
    except OSError as e:  # a full disk or /dev/full
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OutputError(f"-: could not write stdout ({e.strerror or e})") from None


def run_jobs(
    jobs: List[Job],
    upscaler: Upscaler,
    opts: OutputOptions,
    alpha_mode: str = "model",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_done: Optional[Callable[[FileResult], None]] = None,
    rank: int = 0,
    on_write: Optional[Callable[[Job, int], None]] = None,
) -> List[FileResult]:
    """Upscale each job's file; a failure is recorded with one line and the batch goes on.
    `on_write(job, output pixels)` is called when the encoding and writing stage begins."""
    results = []
    for job in jobs:
        t0 = time.perf_counter()
        shown = job.shown
        res = FileResult(shown, str(job.output), False, rank=rank)
        try:
            _one(job, upscaler, opts, alpha_mode, max_pixels, res, on_write)
        except SrkdError as e:
            msg = str(e).replace(str(job.input), shown)
            res.error = msg if msg.startswith(shown) or msg.startswith(str(job.output)) else f"{shown}: {msg}"
        except MemoryError:
            res.error = f"{shown}: out of memory (try a smaller --tile)"
        except Exception as e:  # a bug, not the file's fault; the batch still goes on
            if os.environ.get("SRKD_DEBUG"):
                traceback.print_exc()
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            res.error = f"{shown}: internal error: {type(e).__name__}: {first} (set SRKD_DEBUG=1 for the traceback)"
        res.seconds = round(time.perf_counter() - t0, 4)
        results.append(res)
        if on_done:
            on_done(res)
    return results


# ---------------------------------------------------------------- the whole batch: upscale_files


@dataclass
class UpscaleRequest:
    """Everything one `srkd upscale` run needs; the defaults are the command's."""

    inputs: Sequence[Union[str, Path]]  # image files, folders or glob patterns; "-": one image from stdin
    output: Union[str, Path, None] = None  # a file (one input), a folder, or "-" (stdout); None: beside each input
    scale: Union[int, float, str, None] = None  # 2, 3, 4 or a fraction such as 3.5 (text as --scale takes it);
    #                                             None: the model's, else 4
    model: Optional[str] = None  # a zoo name or family, a weights file or hf:// file; None: the bundled default
    weights: Union[str, Path, None] = None  # a .safetensors or official .pth file
    overrides: Optional[Mapping[str, Any]] = None  # architecture options the weights cannot tell (--set)
    device: str = "auto"
    backend: str = "auto"
    precision: str = "fp32"
    threads: Optional[int] = None  # torch's CPU threads (and the backend's)
    tile: Union[int, str, None] = "auto"  # input pixels, "auto" (from free memory), or None / "none" / 0
    tile_overlap: Optional[int] = None  # None: from the model's receptive field
    tta: bool = False
    alpha: str = "model"  # or "bicubic"
    suffix: Optional[str] = None  # None: "_x{scale}"
    format: Optional[str] = None  # png, jpg, webp, tif, bmp; None or "auto": the input's (or the -o file's)
    quality: Optional[int] = None  # JPEG/WebP; None: 95
    png_compression: int = PNG_COMPRESSION
    overwrite: bool = False
    skip_existing: bool = False
    recursive: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    report: Union[str, Path, None] = None  # JSON records of every file, written at the end ("-": stdout)
    ranks: Optional[DistEnv] = None  # torchrun's rank and world size; None: what the environment says


@dataclass
class UpscaleHooks:
    """What a batch tells its caller while it runs; each is optional. `note` and model-level
    warnings come from rank 0 only; the rest from every rank, about its own files."""

    note: Optional[Callable[[str], None]] = None  # what srkd chose or did: a backend fallback, inputs left out
    warn: Optional[Callable[[str], None]] = None  # something about the model, the options or one file
    started: Optional[Callable[[int, float, str], None]] = None  # (this rank's files, final scale, model name)
    tiles: Optional[Callable[[int, int], None]] = None  # (tiles done, tiles) within one file
    writing: Optional[Callable[[Job, int], None]] = None  # a file's encoding and writing begins (output pixels)
    done: Optional[Callable[[FileResult], None]] = None  # a file finished, well or not


@dataclass
class UpscaleOutcome:
    """What `upscale_files` did. `results` on rank 0: every rank's files, the plan's failures
    first, then in input order; on the other ranks, their own."""

    results: List[FileResult]
    skipped: List[FileResult]  # skip_existing: the output was already there
    unmatched: List[str]  # one line for each pattern or folder that gave no image
    scale: int  # the model's
    outscale: Optional[float]  # the final scale where it is not the model's
    backend: str  # the backend that ran
    model: str  # the model's name, as messages give it
    main: bool = True  # rank 0, which holds every result and wrote the report
    report_error: Optional[str] = None  # the report could not be written (the images were)

    @property
    def final_scale(self) -> float:
        return self.outscale or self.scale

    @property
    def failed(self) -> List[FileResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not (self.failed or self.unmatched or self.report_error)


def parse_tile(tile: Union[int, str, None]) -> Union[int, str, None]:
    """'auto', 'none' (or 0, or None) or a size in pixels."""
    if tile is None or isinstance(tile, int):
        return tile or None
    if tile.lower() in ("auto", "none", "0"):
        return None if tile.lower() in ("none", "0") else "auto"
    try:
        return int(tile)
    except ValueError:
        raise ConfigError(f"--tile {tile}: give a size in pixels, auto, or none") from None


def parse_scale(scale: Union[int, float, str, None]) -> Tuple[Optional[int], Optional[float]]:
    """A scale (or --scale as typed) -> (the model's scale, the final scale when that is not an integer).

    A fraction (Real-ESRGAN's `-s 3.5`) takes the nearest model scale at or above it; the
    output is then resampled down to it.
    """
    if scale is None:
        return None, None
    text = str(scale)
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--scale {text}: give {or_list(SCALES)}, or a fraction such as 3.5") from None
    if value.is_integer():
        if int(value) not in SCALES:  # echoed as typed: int(1e308) has 309 digits
            raise ConfigError(f"--scale {text}: use {or_list(SCALES)}, or a fraction such as 3.5")
        return int(value), None
    if not 1 < value < max(SCALES):
        raise ConfigError(f"--scale {text}: a fractional scale must lie between 1 and {max(SCALES)}")
    return max(min(SCALES), math.ceil(value)), value


def _names_one_model(model: str) -> bool:
    """`model` is a weights file, a Hub file or one zoo entry (one scale), not a family such as `swinir4`."""
    from .zoo import get_zoo

    return get_zoo().identify(model, strict=False) is not None


def _load(model: Optional[str], weights, scale: Optional[int], outscale: Optional[float], dev: torch.device,
          overrides=None) -> LoadedModel:
    """The model for (scale, outscale) as `parse_scale` gave them."""
    if outscale is None:
        return load_model(model, weights, scale if scale else (None if (model or weights) else 4), dev,
                          overrides=overrides)
    # A fractional --scale: a family gives its member at the next scale up; a file or a named
    # entry has one scale, which must reach it.
    fixed = weights is not None or (model is not None and _names_one_model(model))
    lm = load_model(model, weights, None if fixed else scale, dev, overrides=overrides)
    if lm.scale < outscale:
        raise ConfigError(f"--scale {outscale:g}: {weights or model} upscales x{lm.scale}, less than that")
    return lm


T = TypeVar("T")


def on_main(env: DistEnv, work: Callable[[], T]) -> T:
    """Run `work` on rank 0 only and hand its result (or its SrkdError) to every rank, so all
    ranks act on one plan even when files appear while the others are still planning."""
    if not (env.enabled and dist.is_initialized()):
        return work()
    box: List[Any] = [None]
    if env.is_main:
        try:
            box[0] = ("ok", work())
        except SrkdError as e:
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def share(jobs: Sequence[T], env: DistEnv) -> List[T]:
    """This rank's jobs: round robin, so that a folder's large and small images mix on every rank."""
    return list(jobs[env.rank :: env.world_size])


def upscale_files(request: UpscaleRequest, hooks: Optional[UpscaleHooks] = None) -> UpscaleOutcome:
    """Upscale every image `request` names, as `srkd upscale` does, and write the outputs.

    A file that fails is a failed result and the others go on; what stops the whole batch (a
    bad option, no image at all, a model that does not load) raises SrkdError, on every rank
    alike. Under torchrun every rank calls this.
    """
    hooks = hooks or UpscaleHooks()
    env = request.ranks or dist_env()
    owns_group = env.enabled and not dist.is_initialized()  # a caller's own process group stays up
    spool: List[str] = []  # the folder holding stdin's image
    try:
        return _upscale_files(request, hooks, env, spool)
    finally:
        for folder in spool:
            shutil.rmtree(folder, ignore_errors=True)
        if owns_group:
            shutdown()


def _upscale_files(request: UpscaleRequest, hooks: UpscaleHooks, env: DistEnv, spool: List[str]) -> UpscaleOutcome:
    """The checks that need no model, stdin, then the batch."""
    inputs = [os.fspath(i) for i in request.inputs]
    if not inputs:
        raise ConfigError("no inputs: give image files, folders or patterns (or '-' for stdin)")
    scale, outscale = parse_scale(request.scale)
    if request.alpha not in ALPHA_MODES:
        raise ConfigError(f"--alpha {request.alpha}: choose model or bicubic")
    fmt = request.format
    if fmt is not None and fmt.lower() == "auto":  # Real-ESRGAN's --ext auto: the input's own format
        fmt = None
    check_suffix(request.suffix)
    kind = output_kind(request.output)
    report = None if request.report is None else os.fspath(request.report)
    weights = request.weights
    # Up front, not after the batch: a report must never replace an input or an existing file.
    check_report("--json", report, request.overwrite, inputs=[i for i in inputs if i != "-"] + ([weights] if weights else []))
    if kind == "stdout":
        if not fmt:
            raise ConfigError("-o -: give --format (png, jpg, webp, tif or bmp); stdout has no name to take it from")
        if report == "-":
            raise ConfigError("-o - and --json - both want stdout (send --json to a file)")
        if env.enabled:
            raise ConfigError("-o -: not under torchrun (one image, one stdout)")
        if sys.stdout.isatty():
            raise ConfigError("-o -: stdout is a terminal; redirect it to a file or a pipe")
    stdin_file = None
    if "-" in inputs:
        if len(inputs) > 1:
            raise ConfigError("input -: stdin holds one image; give no other inputs with it")
        if env.enabled:
            raise ConfigError("input -: not under torchrun (one stdin, several ranks)")
        if kind not in ("file", "stdout"):
            raise ConfigError("input -: give -o FILE or -o - (an image from stdin has no name to write beside)")
        if sys.stdin is None or sys.stdin.isatty():
            raise ConfigError("input -: stdin is a terminal; pipe an image in (cat a.png | srkd upscale - -o out.png)")
        spool.append(tempfile.mkdtemp(prefix="srkd-stdin-"))
        stdin_file = Path(spool[-1]) / "stdin"
        with open(stdin_file, "wb") as f:  # spooled: the readers want a file they can seek in
            shutil.copyfileobj(sys.stdin.buffer, f)
    if request.threads:
        torch.set_num_threads(request.threads)
    opts = OutputOptions(request.output, request.suffix, fmt, 95 if request.quality is None else request.quality,
                         request.overwrite, request.png_compression, request.skip_existing, outscale)
    return _run_batch(request, hooks, env, inputs, stdin_file, scale, opts, report)


def _run_batch(request: UpscaleRequest, hooks: UpscaleHooks, env: DistEnv, inputs: List[str],
               stdin_file: Optional[Path], scale: Optional[int], opts: OutputOptions, report: Optional[str]
               ) -> UpscaleOutcome:
    """Load the model on every rank, plan on rank 0, run this rank's share, gather on rank 0."""
    outscale = opts.outscale
    dev = rank_device(env, pick_device(request.device))
    init_process_group(env, dev)
    lm = _load(request.model, request.weights, scale, outscale, dev, request.overrides)
    s = lm.scale
    main_warn = hooks.warn if env.is_main else None
    note = hooks.note if env.is_main else None
    for msg in lm.notes if main_warn else ():  # what the file could not tell (a Compact model's activation)
        main_warn(msg)
    upscaler, backend = build_upscaler(lm, request.backend, request.precision, dev, request.threads,
                                       parse_tile(request.tile), request.tile_overlap, request.tta, say=note)

    def plan() -> Tuple[List[Job], List[FileResult], List[FileResult], Inputs]:
        folder = opts.output if output_kind(opts.output) == "folder" else None
        got = (Inputs(files=[(stdin_file, Path("stdin"))]) if stdin_file
               else collect_inputs(inputs, request.recursive, opts.suffix, folder))
        jobs, failed, skipped = plan_jobs(got.files, opts, outscale or s)
        outputs = [j.output for j in jobs if j.output != STDOUT] + [Path(r.output) for r in skipped + failed if r.output]
        check_report("--json", report, opts.overwrite, inputs=[f for f, _ in got.files],
                     outputs=[j.output for j in jobs if j.output != STDOUT] + [Path(r.output) for r in skipped])
        stale = remove_stale_temps(outputs)  # what a killed run (kill -9) left mid-write beside these outputs
        if stale and note:
            note(f"removed {len(stale)} temporary file(s) an interrupted srkd run left ({stale[0]}"
                 + (", ...)" if len(stale) > 1 else ")"))
        for job in jobs:
            if job.input == stdin_file:
                job.name = "-"
        for r in failed:
            r.input = "-" if stdin_file and r.input == str(stdin_file) else r.input
        return jobs, got.failed + failed, skipped, got

    jobs, failed, skipped, got = on_main(env, plan)
    mine = share(jobs, env)
    name = str(lm.metadata.get("zoo_name") or (lm.path.name if lm.path is not None else lm.spec.name))
    upscaler.warn = hooks.warn or (lambda msg: None)
    if note and got.earlier_outputs:
        few = ", ".join(p.name for p in got.earlier_outputs[:3]) + (", ..." if len(got.earlier_outputs) > 3 else "")
        note(f"left out {len(got.earlier_outputs)} earlier output(s) of srkd, each beside its input ({few}); "
             "name a file to upscale it anyway")
    if note and got.in_output_folder:
        note(f"left out {len(got.in_output_folder)} image(s) under the output folder {opts.output} (srkd's outputs); "
             "name a file to upscale it anyway")
    if request.quality is not None and main_warn and jobs:
        formats = {output_format(job, opts) for job in jobs}
        if not formats & {"jpg", "webp"}:
            main_warn(f"--quality {request.quality} does nothing for {'/'.join(sorted(f.upper() for f in formats))} "
                      "output, which is lossless (--png-compression trades PNG's time for size)")
    if hooks.started:
        hooks.started(len(mine), outscale or s, name)
    upscaler.progress = hooks.tiles
    results = run_jobs(mine, upscaler, opts, request.alpha, request.max_pixels, on_done=hooks.done, rank=env.rank,
                       on_write=hooks.writing)
    order = {job.shown: i for i, job in enumerate(jobs)}
    gathered = sorted((r for part in gather_objects(results, env) for r in part), key=lambda r: order[r.input])
    outcome = UpscaleOutcome(failed + gathered if env.is_main else results, skipped, got.unmatched, s, outscale,
                             backend, name, main=env.is_main)
    if report and env.is_main:
        try:
            write_report("--json", report, json.dumps([r.to_dict() for r in skipped + outcome.results], indent=2) + "\n",
                         opts.overwrite)
        except OutputError as e:
            outcome.report_error = str(e)
    return outcome
