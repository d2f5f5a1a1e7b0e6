"""`srkd upscale`: files, folders or globs in; upscaled images out, atomically.

The work is `upscale_files` (srkd_cli/upscale.py), torchrun ranks included; this module turns
the options into an UpscaleRequest and shows what the batch says: notes, the progress bar,
errors and the summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..backends import backend_help
from ..config import DEFAULT_MODELS, or_list, parse_settings
from ..distributed import dist_env
from ..errors import ConfigError, SrkdError
from ..imaging.io import DEFAULT_MAX_PIXELS, PNG_COMPRESSION
from ..runtime.signals import Terminated, as_interrupts
from ..upscale import FileResult, Job, UpscaleHooks, UpscaleOutcome, UpscaleRequest, upscale_files
from . import app
from .console import console, err_console, error, note, printable, warn

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
    overrides = parse_settings(settings)
    all_inputs = list(inputs or []) + list(more_inputs)
    if not all_inputs:
        raise ConfigError("Missing argument 'INPUTS...': image files, folders or patterns (or -i, or '-' for stdin)")
    if fp32 and precision != "fp32":
        raise ConfigError(f"--fp32 and --precision {precision} disagree (give one)")
    request = UpscaleRequest(
        inputs=all_inputs, output=output, scale=scale, model=model, weights=weights, overrides=overrides,
        device=device, backend=backend, precision=precision, threads=threads, tile=tile, tile_overlap=tile_overlap,
        tta=tta, alpha=alpha, suffix=suffix, format=fmt, quality=quality, png_compression=png_compression,
        overwrite=overwrite, skip_existing=skip_existing, recursive=recursive, max_pixels=max_pixels, report=json_out,
        ranks=dist_env())
    tally = Tally()
    try:
        with as_interrupts():  # SIGTERM and SIGHUP clean up like Ctrl-C: no temporary file is left
            return _run(request, quiet, tally)
    except KeyboardInterrupt as e:
        what = f"terminated by {e.name}" if isinstance(e, Terminated) else "interrupted"
        where = f"rank {tally.rank}: " if tally.rank is not None else ""
        if tally.total:
            what += f" after {tally.done} of {tally.total} images; rerun with --skip-existing to finish"
        err_console.print(f"{where}{what}", highlight=False, soft_wrap=True)
        return getattr(e, "exit_code", 130)


def _run(request: UpscaleRequest, quiet: bool, tally: Tally) -> int:
    """The batch with its screen, then the errors and the summary (rank 0 only)."""
    ranks = request.ranks
    # No bar where stderr is not a terminal: rich would print a lone empty line there at the end.
    show = not quiet and ranks.is_main and err_console.is_terminal
    screen = _Screen(tally, ranks.rank if ranks.enabled else None, show)
    hooks = UpscaleHooks(note=None if quiet else note, warn=None if quiet else warn, started=screen.started,
                         tiles=screen.tiles, writing=screen.writing, done=screen.done)
    try:
        outcome = upscale_files(request, hooks)
    except SrkdError as e:
        if ranks.is_main:
            raise
        return e.exit_code  # every rank meets the same error; rank 0 prints it once
    finally:
        screen.close()
    if not outcome.main:
        # Rank 0 reports every file and sets the exit code; a non-zero code here would make
        # torchrun stop rank 0 while it is still printing the summary or writing --json.
        return 0
    for msg in outcome.unmatched:
        error(msg)
    for r in outcome.failed:
        error(r.error or "")
    if outcome.report_error:
        error(outcome.report_error)
        return 1
    if not quiet and request.report != "-":
        # With -o -, stdout holds the image and nothing else.
        (err_console if request.output == "-" else console).print(
            escape(printable(_summary(outcome))), highlight=False, soft_wrap=True)
    return 0 if outcome.ok else 1


def _summary(outcome: UpscaleOutcome) -> str:
    done = [r for r in outcome.results if r.ok]
    bad, skipped = outcome.failed, outcome.skipped
    secs = sum(r.seconds for r in done)
    # With nothing done, naming the model and "0.00 s" would read as if it had run.
    ran = f" x{outcome.final_scale:g} with {outcome.model} in {secs:.2f} s ({outcome.backend})" if done else ""
    return (f"upscaled {len(done)} of {len(outcome.results)} image(s){ran}"
            + (f"; {len(bad)} failed" if bad else "") + (f"; {len(skipped)} skipped (output already there)" if skipped else ""))


class _Screen:
    """The progress bar on stderr (a terminal only, rank 0, not --quiet): files, then the tiles
    of the file at hand, then a pulsing "writing" stage for large outputs. It counts the files
    done for the message on an interrupt wherever it shows."""

    def __init__(self, tally: Tally, rank: Optional[int], show: bool):
        self.tally, self.rank, self.show = tally, rank, show
        self.bar: Optional[Progress] = None
        self.files = self.tile_task = self.write_task = None  # the bar's tasks, once started

    def started(self, files: int, scale: float, model: str) -> None:
        self.tally.total, self.tally.rank = files, self.rank
        if not self.show:
            return
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=err_console, transient=True)
        self.bar.start()
        self.files = self.bar.add_task(f"x{scale:g} {model}", total=files)
        self.tile_task = self.bar.add_task("tiles", total=1, visible=False)
        self.write_task = self.bar.add_task("writing", total=None, visible=False)

    def tiles(self, done: int, total: int) -> None:
        if self.bar:
            self.bar.update(self.tile_task, completed=done, total=total, visible=total > 1 and done < total)

    def writing(self, job: Job, pixels: int) -> None:
        if self.bar and pixels >= WRITE_STAGE_PIXELS:  # a pulsing bar with its own clock: the encoder reports nothing
            self.bar.update(self.tile_task, visible=False)
            self.bar.reset(self.write_task, total=None, visible=True,
                           description=f"writing {escape(printable(Path(job.output).name))}")

    def done(self, result: FileResult) -> None:
        self.tally.done += 1
        if self.bar:
            self.bar.update(self.write_task, visible=False)
            self.bar.advance(self.files)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()
            self.bar = None
