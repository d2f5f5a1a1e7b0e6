"""`srkd upscale`: files, folders or globs in; upscaled images out, atomically."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import torch
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..distributed import dist_env, gather_objects, init_process_group, rank_device, shutdown
from ..errors import ConfigError
from ..imaging.io import DEFAULT_MAX_PIXELS
from ..inference import Upscaler, pick_device
from ..loader import load_model
from ..upscale import OutputOptions, collect_inputs, plan_jobs, run_jobs
from . import app
from .console import console, err_console


def parse_tile(tile: str):
    if tile.lower() in ("auto", "none", "0"):
        return None if tile.lower() in ("none", "0") else "auto"
    try:
        return int(tile)
    except ValueError:
        raise ConfigError(f"--tile {tile}: give a size in pixels, auto, or none") from None


@app.command()
def upscale(
    inputs: List[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (one input) or folder. Default: beside each input."),
    scale: Optional[int] = typer.Option(None, "--scale", "-s", help="Upscaling factor: 2, 3 or 4 (default: the model's, else 4)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A model from `srkd models` (default: the bundled squeezesr-xS)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="A weights file (.safetensors or official .pth)."),
    device: str = typer.Option("auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps."),
    precision: str = typer.Option("fp32", help="fp32, fp16 (GPU) or bf16."),
    tile: str = typer.Option("auto", help="Tile edge in input pixels, 'auto' (from free memory) or 'none'."),
    tile_overlap: int = typer.Option(32, help="Overlap between tiles in input pixels."),
    tta: bool = typer.Option(False, "--tta", help="x8 self-ensemble (flips and rotations averaged)."),
    alpha: str = typer.Option("model", help="How to upscale an alpha channel: model or bicubic."),
    suffix: Optional[str] = typer.Option(None, help="Appended to output names (default _xS)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="png, jpg, webp, tif or bmp (default: the input's)."),
    quality: int = typer.Option(95, min=1, max=100, help="JPEG/WebP quality."),
    overwrite: bool = typer.Option(False, help="Replace existing output files."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for inference."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Refuse inputs claiming more pixels (decompression-bomb guard)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write a JSON summary to this file ('-' for stdout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> int:
    """Upscale images with a super-resolution model."""
    if threads:
        torch.set_num_threads(threads)
    env = dist_env()
    dev = rank_device(env, pick_device(device))
    init_process_group(env, dev)
    try:
        files = collect_inputs(inputs, recursive)
        lm = load_model(model, weights, scale if scale else (None if (model or weights) else 4), dev)
        s = lm.scale
        upscaler = Upscaler(lm.model, lm.spec, lm.config, dev, precision, parse_tile(tile), tile_overlap, tta)
        opts = OutputOptions(output, suffix, fmt, quality, overwrite)
        jobs, failed = plan_jobs(files, opts, s)
        mine = jobs[env.rank :: env.world_size]
        show = not quiet and env.is_main
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=err_console, disable=not show, transient=True,
        ) as bar:
            task = bar.add_task(f"x{s} {lm.metadata.get('zoo_name', lm.spec.name)}", total=len(mine))
            tiles = bar.add_task("tiles", total=1, visible=False)

            def tile_progress(done: int, total: int) -> None:
                bar.update(tiles, completed=done, total=total, visible=total > 1 and done < total)

            upscaler.progress = tile_progress
            results = run_jobs(mine, upscaler, opts, alpha, max_pixels, on_done=lambda r: bar.advance(task))
        everything = [r for part in gather_objects(results, env) for r in part] + (failed if env.is_main else [])
    finally:
        shutdown()
    if not env.is_main:
        return 0 if all(r.ok for r in everything) else 1
    bad = [r for r in everything if not r.ok]
    for r in bad:
        err_console.print(f"[bold red]error:[/] {r.error}", highlight=False, soft_wrap=True)
    if json_out:
        text = json.dumps([r.to_dict() for r in everything], indent=2)
        if json_out == "-":
            sys.stdout.write(text + "\n")
        else:
            Path(json_out).write_text(text + "\n")
    if not quiet and json_out != "-":
        done = [r for r in everything if r.ok]
        secs = sum(r.seconds for r in done)
        console.print(f"upscaled {len(done)} of {len(everything)} image(s) x{s} in {secs:.2f} s" + (f"; {len(bad)} failed" if bad else ""))
    return 1 if bad else 0
