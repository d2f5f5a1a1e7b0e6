"""`srkd upscale`: files, folders or globs in; upscaled images out, atomically.

Under torchrun every rank loads the model, rank 0 plans the outputs and hands each rank its
share of the files (round robin), and rank 0 gathers the results and prints the one summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.distributed as dist
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..backends import backend_help, check_backend, pick_backend, prepare
from ..checkpoint import LoadedModel
from ..config import check_scale
from ..distributed import DistEnv, dist_env, gather_objects, init_process_group, rank_device, shutdown
from ..errors import ConfigError, SrkdError
from ..imaging.io import DEFAULT_MAX_PIXELS, PNG_COMPRESSION
from ..inference import PRECISIONS, TileSpec, Upscaler, pick_device
from ..loader import load_model
from ..runtime.allocator import tune_cpu_allocator
from ..upscale import ALPHA_MODES, FileResult, Job, OutputOptions, collect_inputs, plan_jobs, run_jobs
from . import app
from .console import console, err_console


def parse_tile(tile: str):
    """'auto', 'none' (or 0) or a size in pixels."""
    if tile.lower() in ("auto", "none", "0"):
        return None if tile.lower() in ("none", "0") else "auto"
    try:
        return int(tile)
    except ValueError:
        raise ConfigError(f"--tile {tile}: give a size in pixels, auto, or none") from None


def _note(msg: str) -> None:
    err_console.print(f"note: {escape(msg)}", highlight=False, soft_wrap=True)


def make_runner(model, backend: str, precision: str, dev: torch.device, threads: Optional[int] = None,
                say: Optional[Callable[[str], None]] = None) -> Tuple[Any, str, str]:
    """(runner, backend label, precision for the Upscaler) for `--backend`/`--precision`, as
    `srkd upscale` runs them. A precision the backend's own graph runs (int8) is the runner's
    business: the Upscaler then runs float32 around it."""
    if check_backend(backend, upscale=True) == "auto":
        backend = pick_backend(model, dev, precision, note=say or (lambda msg: None))
    runner = prepare(model, backend, dev, threads=threads, precision=precision, say=say)
    if precision in PRECISIONS:
        return runner, backend, precision
    return runner, f"{backend} {precision}", "fp32"


def make_upscaler(lm: LoadedModel, backend: str, precision: str, dev: torch.device, threads: Optional[int] = None,
                  tile: TileSpec = "auto", overlap: int = 32, tta: bool = False,
                  say: Optional[Callable[[str], None]] = None) -> Tuple[Upscaler, str]:
    """(the Upscaler, the backend label) `srkd upscale` runs for these options; `srkd eval` scores the same."""
    if dev.type == "cpu":
        tune_cpu_allocator()  # glibc reuses freed memory: the runners then measured faster (see optimize)
    runner, label, upscaler_precision = make_runner(lm.model, backend, precision, dev, threads, say)
    return Upscaler(runner, lm.spec, lm.config, dev, upscaler_precision, tile, overlap, tta), label


def _on_main(env: DistEnv, work: Callable[[], Any]) -> Any:
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


@app.command()
def upscale(
    inputs: List[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (one input) or folder. Default: beside each input."),
    scale: Optional[int] = typer.Option(None, "--scale", "-s", help="Upscaling factor: 2, 3 or 4 (default: the model's, else 4)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A model from `srkd models` (default: the bundled squeezesr-kd for the scale)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="A weights file (.safetensors or official .pth)."),
    device: str = typer.Option("auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps."),
    precision: str = typer.Option("fp32", help="fp32, fp16 (GPU), bf16 (inf/NaN falls back to fp32), or int8 (SqueezeSR "
                                                "on onnxruntime's CPU, quantised: faster, ~0.15 dB lower; docs/performance.md)."),
    tile: str = typer.Option("auto", help="Tile edge in input pixels, 'auto' (from free memory) or 'none'."),
    tile_overlap: int = typer.Option(32, min=0, help="Overlap between tiles in input pixels."),
    tta: bool = typer.Option(False, "--tta", help="x8 self-ensemble (flips and rotations averaged)."),
    alpha: str = typer.Option("model", help="How to upscale an alpha channel: model or bicubic."),
    suffix: Optional[str] = typer.Option(None, help="Appended to output names (default _xS)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="png, jpg, webp, tif or bmp (default: the input's)."),
    quality: int = typer.Option(95, min=1, max=100, help="JPEG/WebP quality (WebP 100: lossless)."),
    png_compression: int = typer.Option(PNG_COMPRESSION, "--png-compression", min=0, max=9,
                                        help="PNG zlib level: 1 fast (default), 9 smallest; lossless either way."),
    overwrite: bool = typer.Option(False, help="Replace existing output files (never an input)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders (kept under -o DIR)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for inference."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Refuse inputs claiming more pixels (decompression-bomb guard)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write per-file records as JSON to this file ('-' for stdout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    backend: str = typer.Option("auto", "--backend", help=backend_help(upscale=True)),
) -> int:
    """Upscale images with a super-resolution model."""
    if scale is not None:
        check_scale(scale)
    if alpha not in ALPHA_MODES:
        raise ConfigError(f"--alpha {alpha}: choose model or bicubic")
    if threads:
        torch.set_num_threads(threads)
    env = dist_env()
    try:
        everything, s, used, name = _upscale_all(env, inputs, scale, model, weights, device, precision, tile, tile_overlap, tta,
                                     alpha, OutputOptions(output, suffix, fmt, quality, overwrite, png_compression), recursive,
                                     max_pixels, quiet, backend, threads)
    except SrkdError as e:
        if env.is_main:
            raise
        return e.exit_code  # every rank meets the same error; rank 0 prints it once
    finally:
        shutdown()
    if not env.is_main:
        # Rank 0 reports every file and sets the exit code; a non-zero code here would make
        # torchrun stop rank 0 while it is still printing the summary or writing --json.
        return 0
    bad = [r for r in everything if not r.ok]
    for r in bad:
        err_console.print(f"[bold red]error:[/] {escape(r.error or '')}", highlight=False, soft_wrap=True)
    if json_out:
        text = json.dumps([r.to_dict() for r in everything], indent=2)
        if json_out == "-":
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        else:
            try:
                Path(json_out).write_text(text + "\n")
            except OSError as e:
                err_console.print(f"[bold red]error:[/] {escape(f'--json {json_out}: cannot write ({e.strerror or e})')}",
                                  highlight=False, soft_wrap=True)
                return 1
    if not quiet and json_out != "-":
        done = [r for r in everything if r.ok]
        secs = sum(r.seconds for r in done)
        console.print(f"upscaled {len(done)} of {len(everything)} image(s) x{s} with {name} in {secs:.2f} s ({used})"
                      + (f"; {len(bad)} failed" if bad else ""), highlight=False, soft_wrap=True)
    return 1 if bad else 0


def _upscale_all(env: DistEnv, inputs, scale, model, weights, device, precision, tile, tile_overlap, tta,
                 alpha, opts: OutputOptions, recursive, max_pixels, quiet, backend="auto", threads=None) -> Tuple[List[FileResult], int, str, str]:
    """Every rank's results (rank 0: all of them, plan failures included), the scale, the backend run and the model's name."""
    dev = rank_device(env, pick_device(device))
    init_process_group(env, dev)
    lm = load_model(model, weights, scale if scale else (None if (model or weights) else 4), dev)
    s = lm.scale
    upscaler, backend = make_upscaler(lm, backend, precision, dev, threads, parse_tile(tile), tile_overlap, tta,
                                      say=None if (quiet or not env.is_main) else _note)

    def plan() -> Tuple[List[Job], List[FileResult]]:
        files, missing = collect_inputs(inputs, recursive)
        jobs, failed = plan_jobs(files, opts, s)
        return jobs, missing + failed

    jobs, failed = _on_main(env, plan)
    mine = jobs[env.rank :: env.world_size]
    show = not quiet and env.is_main
    upscaler.warn = lambda msg: None if quiet else err_console.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err_console, disable=not show, transient=True,
    ) as bar:
        name = str(lm.metadata.get("zoo_name") or (lm.path.name if lm.path is not None else lm.spec.name))
        task = bar.add_task(f"x{s} {name}", total=len(mine))
        tiles = bar.add_task("tiles", total=1, visible=False)

        def tile_progress(done: int, total: int) -> None:
            bar.update(tiles, completed=done, total=total, visible=total > 1 and done < total)

        upscaler.progress = tile_progress
        results = run_jobs(mine, upscaler, opts, alpha, max_pixels, on_done=lambda r: bar.advance(task), rank=env.rank)
    order = {job.input: i for i, job in enumerate(jobs)}
    gathered = sorted((r for part in gather_objects(results, env) for r in part), key=lambda r: order[Path(r.input)])
    return (failed + gathered if env.is_main else results), s, backend, name
