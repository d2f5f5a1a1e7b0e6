"""`srkd upscale`: files, folders or globs in; upscaled images out, atomically.

Under torchrun every rank loads the model, rank 0 plans the outputs and hands each rank its
share of the files (round robin), and rank 0 gathers the results and prints the one summary.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.distributed as dist
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..atomic import check_report, remove_stale_temps, write_report
from ..backends import backend_help, build_upscaler
from ..checkpoint import LoadedModel
from ..config import DEFAULT_MODELS, SCALES, or_list, parse_settings
from ..distributed import DistEnv, dist_env, gather_objects, init_process_group, rank_device, shutdown
from ..errors import ConfigError, ModelNotFoundError, OutputError, SrkdError
from ..imaging.io import DEFAULT_MAX_PIXELS, PNG_COMPRESSION
from ..inference import pick_device
from ..loader import load_model
from ..runtime.signals import Terminated, as_interrupts
from ..upscale import (ALPHA_MODES, STDOUT, FileResult, Inputs, Job, OutputOptions, check_suffix, collect_inputs,
                       output_format, output_kind, plan_jobs, run_jobs)
from . import app
from .console import console, err_console, note, printable


def parse_tile(tile: str):
    """'auto', 'none' (or 0) or a size in pixels."""
    if tile.lower() in ("auto", "none", "0"):
        return None if tile.lower() in ("none", "0") else "auto"
    try:
        return int(tile)
    except ValueError:
        raise ConfigError(f"--tile {tile}: give a size in pixels, auto, or none") from None


def parse_scale(text: Optional[str]) -> Tuple[Optional[int], Optional[float]]:
    """--scale as typed -> (the model's scale, the final scale when that is not an integer).

    A fraction (Real-ESRGAN's `-s 3.5`) takes the nearest model scale at or above it; the
    output is then resampled down to it.
    """
    if text is None:
        return None, None
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


# Outputs this large show a "writing" stage after the tiles bar: encoding a 16000x12000 PNG
# took 26 s with nothing on the screen.
WRITE_STAGE_PIXELS = 4_000_000


@dataclass
class Tally:
    """How far the batch got, for the message on an interrupt."""

    done: int = 0
    total: Optional[int] = None  # None until the outputs are planned
    rank: Optional[int] = None  # set under torchrun, where each rank counts its own share


@app.command()
def upscale(
    inputs: Optional[List[str]] = typer.Argument(None, help="Image files, folders or glob patterns; '-' reads one image from stdin."),
    more_inputs: List[str] = typer.Option([], "--input", "-i", help="More inputs (Real-ESRGAN's -i); repeatable."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Output file (one input), folder, or '-' for stdout "
                                         "(needs --format). Default: beside each input."),
    scale: Optional[str] = typer.Option(None, "--scale", "-s", "--outscale", help="Upscaling factor: 2, 3 or 4 (default: the "
                                        "model's, else 4); a fraction such as 3.5 runs the next model scale up and resamples down."),
    model: Optional[str] = typer.Option(None, "--model", "-m", "-n", help="A model from `srkd models` (default: the bundled "
                                        f"{or_list([DEFAULT_MODELS[k] for k in sorted(DEFAULT_MODELS)])}, by scale)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="A weights file (.safetensors or official .pth)."),
    settings: Optional[List[str]] = typer.Option(None, "--set", help="Architecture option KEY=VALUE for what a weights file "
                                                 "cannot tell (e.g. act=leakyrelu for a Compact model); repeatable."),
    device: str = typer.Option("auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps."),
    precision: str = typer.Option("fp32", help="fp32, fp16 (GPU), bf16 (inf/NaN falls back to fp32), or int8 (SqueezeSR, "
                                                "RepSR or Compact on onnxruntime's CPU, quantised: faster, ~0.1 dB lower; docs/performance.md)."),
    fp32: bool = typer.Option(False, "--fp32", help="Same as --precision fp32 (Real-ESRGAN's spelling)."),
    tile: str = typer.Option("auto", "--tile", "-t", help="Tile edge in input pixels, 'auto' (from free memory) or 'none' (or 0)."),
    tile_overlap: Optional[int] = typer.Option(None, min=0, help="Overlap between tiles in input pixels (default: 4x the "
                                               "model's receptive field where it declares one, 32 to 64; else 32)."),
    tta: bool = typer.Option(False, "--tta", help="x8 self-ensemble (flips and rotations averaged)."),
    alpha: str = typer.Option("model", help="How to upscale an alpha channel: model or bicubic."),
    suffix: Optional[str] = typer.Option(None, help="Appended to output names (default _xS); part of a file name only."),
    fmt: Optional[str] = typer.Option(None, "--format", "--ext", help="png, jpg, webp, tif or bmp (default, or auto: the input's)."),
    quality: Optional[int] = typer.Option(None, min=1, max=100, help="JPEG/WebP quality, default 95 (WebP 100: lossless)."),
    png_compression: int = typer.Option(PNG_COMPRESSION, "--png-compression", min=0, max=9,
                                        help="PNG zlib level: 1 fast (default), 9 smallest; lossless either way."),
    overwrite: bool = typer.Option(False, help="Replace existing output files and --json report (never an input)."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose output exists and decodes "
                                       "(finishes an interrupted batch)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders (kept under -o DIR)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for inference."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, min=1, help="Refuse inputs claiming more pixels (decompression-bomb guard)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write per-file records as JSON to this file ('-' for stdout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    backend: str = typer.Option("auto", "--backend", help=backend_help(upscale=True)),
) -> int:
    """Upscale images with a super-resolution model."""
    tally = Tally()
    spool: List[str] = []  # the folder holding stdin's image, removed at the end
    try:
        with as_interrupts():  # SIGTERM and SIGHUP clean up like Ctrl-C: no temporary file is left
            return _upscale_command(tally, spool, list(inputs or []) + list(more_inputs), output, scale, model, weights,
                                    device, precision, fp32, tile, tile_overlap, tta, alpha, suffix, fmt, quality,
                                    png_compression, overwrite, skip_existing, recursive, threads, max_pixels, json_out,
                                    quiet, backend, overrides=parse_settings(settings))
    except KeyboardInterrupt as e:
        what = f"terminated by {e.name}" if isinstance(e, Terminated) else "interrupted"
        where = f"rank {tally.rank}: " if tally.rank is not None else ""
        if tally.total:
            what += f" after {tally.done} of {tally.total} images; rerun with --skip-existing to finish"
        err_console.print(f"{where}{what}", highlight=False, soft_wrap=True)
        return getattr(e, "exit_code", 130)
    finally:
        for folder in spool:
            shutil.rmtree(folder, ignore_errors=True)


def _upscale_command(tally: Tally, spool: List[str], inputs: List[str], output, scale_text, model, weights, device,
                     precision, fp32, tile, tile_overlap, tta, alpha, suffix, fmt, quality, png_compression, overwrite,
                     skip_existing, recursive, threads, max_pixels, json_out, quiet, backend, overrides=None) -> int:
    """The command once its options are parsed: checks, stdin, the batch, the report."""
    if not inputs:
        raise ConfigError("Missing argument 'INPUTS...': image files, folders or patterns (or -i, or '-' for stdin)")
    scale, outscale = parse_scale(scale_text)
    if fp32 and precision != "fp32":
        raise ConfigError(f"--fp32 and --precision {precision} disagree (give one)")
    if alpha not in ALPHA_MODES:
        raise ConfigError(f"--alpha {alpha}: choose model or bicubic")
    if fmt is not None and fmt.lower() == "auto":  # Real-ESRGAN's --ext auto: the input's own format
        fmt = None
    check_suffix(suffix)
    kind = output_kind(output)
    # Up front, not after the batch: a report must never replace an input or an existing file.
    check_report("--json", json_out, overwrite, inputs=[i for i in inputs if i != "-"] + ([weights] if weights else []))
    env = dist_env()
    if kind == "stdout":
        if not fmt:
            raise ConfigError("-o -: give --format (png, jpg, webp, tif or bmp); stdout has no name to take it from")
        if json_out == "-":
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
    if threads:
        torch.set_num_threads(threads)
    opts = OutputOptions(output, suffix, fmt, 95 if quality is None else quality, overwrite, png_compression,
                         skip_existing, outscale)
    try:
        results, skipped, unmatched, s, used, name = _upscale_all(
            env, tally, inputs, stdin_file, scale, outscale, model, weights, device, precision, tile, tile_overlap, tta,
            alpha, opts, quality, recursive, max_pixels, quiet, backend, threads, json_out, overrides)
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
    bad = [r for r in results if not r.ok]
    for msg in unmatched:  # file names as `ls` shows them: no control character reaches the terminal
        err_console.print(f"[bold red]error:[/] {escape(printable(msg))}", highlight=False, soft_wrap=True)
    for r in bad:
        err_console.print(f"[bold red]error:[/] {escape(printable(r.error or ''))}", highlight=False, soft_wrap=True)
    if json_out:
        text = json.dumps([r.to_dict() for r in skipped + results], indent=2)
        try:
            write_report("--json", json_out, text + "\n", overwrite)
        except OutputError as e:
            err_console.print(f"[bold red]error:[/] {escape(printable(str(e)))}", highlight=False, soft_wrap=True)
            return 1
    if not quiet and json_out != "-":
        done = [r for r in results if r.ok]
        secs = sum(r.seconds for r in done)
        x = f"x{outscale:g}" if outscale else f"x{s}"
        # With nothing done, naming the model and "0.00 s" would read as if it had run.
        ran = f" {x} with {name} in {secs:.2f} s ({used})" if done else ""
        line = (f"upscaled {len(done)} of {len(results)} image(s){ran}"
                + (f"; {len(bad)} failed" if bad else "") + (f"; {len(skipped)} skipped (output already there)" if skipped else ""))
        # With -o -, stdout holds the image and nothing else.
        (err_console if kind == "stdout" else console).print(escape(printable(line)), highlight=False, soft_wrap=True)
    return 1 if bad or unmatched else 0


def _names_one_model(model: str) -> bool:
    """`model` is a weights file or one zoo entry (one scale), not a family such as `swinir4`."""
    from ..zoo import get_zoo

    if Path(model).expanduser().is_file() or model.startswith("hf://"):  # a file, or a pinned Hub file
        return True
    try:
        get_zoo().get(model)
        return True
    except ModelNotFoundError:
        return False


def _load(model, weights, scale: Optional[int], outscale: Optional[float], dev: torch.device,
          overrides=None) -> LoadedModel:
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


def _upscale_all(env: DistEnv, tally: Tally, inputs, stdin_file: Optional[Path], scale, outscale, model, weights, device,
                 precision, tile, tile_overlap, tta, alpha, opts: OutputOptions, quality_given, recursive, max_pixels,
                 quiet, backend="auto", threads=None, json_out=None, overrides=None
                 ) -> Tuple[List[FileResult], List[FileResult], List[str], int, str, str]:
    """(every rank's results; rank 0: all of them, plan failures included), the skipped, the
    patterns that matched nothing, the model's scale, the backend run and the model's name."""
    dev = rank_device(env, pick_device(device))
    init_process_group(env, dev)
    lm = _load(model, weights, scale, outscale, dev, overrides)
    s = lm.scale
    if not quiet and env.is_main:
        for msg in lm.notes:  # what the file could not tell (a Compact model's activation)
            err_console.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    say = None if (quiet or not env.is_main) else note
    upscaler, backend = build_upscaler(lm, backend, precision, dev, threads, parse_tile(tile), tile_overlap, tta, say=say)

    def plan() -> Tuple[List[Job], List[FileResult], List[FileResult], Inputs]:
        folder = opts.output if output_kind(opts.output) == "folder" else None
        got = (Inputs(files=[(stdin_file, Path("stdin"))]) if stdin_file
               else collect_inputs(inputs, recursive, opts.suffix, folder))
        jobs, failed, skipped = plan_jobs(got.files, opts, outscale or s)
        outputs = [j.output for j in jobs if j.output != STDOUT] + [Path(r.output) for r in skipped + failed if r.output]
        check_report("--json", json_out, opts.overwrite, inputs=[f for f, _ in got.files],
                     outputs=[j.output for j in jobs if j.output != STDOUT] + [Path(r.output) for r in skipped])
        stale = remove_stale_temps(outputs)  # what a killed run (kill -9) left mid-write beside these outputs
        if stale and say:
            say(f"removed {len(stale)} temporary file(s) an interrupted srkd run left ({stale[0]}"
                + (", ...)" if len(stale) > 1 else ")"))
        for job in jobs:
            if job.input == stdin_file:
                job.name = "-"
        for r in failed:
            r.input = "-" if stdin_file and r.input == str(stdin_file) else r.input
        return jobs, got.failed + failed, skipped, got

    jobs, failed, skipped, got = _on_main(env, plan)
    mine = jobs[env.rank :: env.world_size]
    tally.total, tally.rank = len(mine), (env.rank if env.enabled else None)
    show = not quiet and env.is_main
    upscaler.warn = lambda msg: None if quiet else err_console.print(f"[yellow]warning:[/] {escape(printable(msg))}",
                                                                     highlight=False, soft_wrap=True)
    if say and got.earlier_outputs:
        few = ", ".join(p.name for p in got.earlier_outputs[:3]) + (", ..." if len(got.earlier_outputs) > 3 else "")
        say(f"left out {len(got.earlier_outputs)} earlier output(s) of srkd, each beside its input ({few}); "
            "name a file to upscale it anyway")
    if say and got.in_output_folder:
        say(f"left out {len(got.in_output_folder)} image(s) under the output folder {opts.output} (srkd's outputs); "
            "name a file to upscale it anyway")
    if quality_given is not None and env.is_main and jobs:
        formats = {output_format(job, opts) for job in jobs}
        if not formats & {"jpg", "webp"}:
            upscaler.warn(f"--quality {quality_given} does nothing for {'/'.join(sorted(f.upper() for f in formats))} output, "
                          "which is lossless (--png-compression trades PNG's time for size)")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        # Off where stderr is not a terminal: rich would print a lone empty line there at the end.
        console=err_console, disable=not show or not err_console.is_terminal, transient=True,
    ) as bar:
        name = str(lm.metadata.get("zoo_name") or (lm.path.name if lm.path is not None else lm.spec.name))
        task = bar.add_task(f"x{outscale or s:g} {name}", total=len(mine))
        tiles = bar.add_task("tiles", total=1, visible=False)
        writing = bar.add_task("writing", total=None, visible=False)

        def tile_progress(done: int, total: int) -> None:
            bar.update(tiles, completed=done, total=total, visible=total > 1 and done < total)

        def write_stage(job: Job, pixels: int) -> None:
            if pixels >= WRITE_STAGE_PIXELS:  # a pulsing bar with its own clock: the encoder reports nothing
                bar.update(tiles, visible=False)
                bar.reset(writing, total=None, visible=True,
                          description=f"writing {escape(printable(Path(job.output).name))}")

        def file_done(r: FileResult) -> None:
            tally.done += 1
            bar.update(writing, visible=False)
            bar.advance(task)

        upscaler.progress = tile_progress
        results = run_jobs(mine, upscaler, opts, alpha, max_pixels, on_done=file_done, rank=env.rank, on_write=write_stage)
    order = {job.shown: i for i, job in enumerate(jobs)}
    gathered = sorted((r for part in gather_objects(results, env) for r in part), key=lambda r: order[r.input])
    return (failed + gathered if env.is_main else results), skipped, got.unmatched, s, backend, name
