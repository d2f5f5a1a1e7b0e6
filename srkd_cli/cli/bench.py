"""`srkd bench`: time models against bicubic baselines and print a table (and JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..atomic import check_report
from ..backends import backend_help
from ..config import DEFAULT_MODELS, check_scale
from ..errors import ConfigError
from . import app
from .console import err_console, table_console


def _ms(s: Optional[float]) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.1f}" if s >= 0.01 else f"{s * 1e3:.2f}"


def _num(v: Optional[float], fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render_table(records, title: str = "") -> Table:
    table = Table(title=title or None, title_justify="left")
    for name, justify in [
        ("model", "left"), ("backend", "left"), ("device", "left"), ("params", "right"), ("MAC/px", "right"),
        ("median ms", "right"), ("min-max ms", "right"), ("MP/s", "right"), ("peak MB", "right"),
        ("x opencv", "right"), ("floor ms", "right"), ("x floor", "right"),
    ]:
        table.add_column(name, justify=justify, no_wrap=name != "model")
    for r in records:
        table.add_row(
            r["model"], r["backend"] + (" int8" if r.get("precision") == "int8" else ""), r["device"], f"{r['params']:,}", _num(r["macs_per_pixel"], ",.0f"),
            _ms(r["median_s"]), f"{_ms(r['min_s'])}-{_ms(r['max_s'])}", _num(r["mp_per_s"], ".2f"),
            _num(r["peak_mem_mb"], ".0f"), _num(r["ratio_to_opencv"], ".1f"), _ms(r["floor_s"]),
            _num(r["floor_ratio"], ".2f"),
        )
    return table


@app.command()
def bench(
    model: List[str] = typer.Option(
        [], "--model", "-m",
        help="Model to time (repeatable): a zoo name, a weights file, or an architecture (squeezesr, edsr-t, "
             "swinir, swinir:blocks=2) timed with untrained weights. Default: what `srkd upscale` runs at the "
             f"scale ({', '.join(DEFAULT_MODELS[s] for s in sorted(DEFAULT_MODELS))}).",
    ),
    size: str = typer.Option("512x512", help="Input (LR) size, WIDTHxHEIGHT."),
    scale: int = typer.Option(2, "--scale", "-s", help="Upscaling factor: 2, 3 or 4."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N, mps or auto."),
    repeat: int = typer.Option(10, min=1, help="Timed calls per row, after the warm-up."),
    warmup: int = typer.Option(2, min=0, help="Untimed calls per row first."),
    backend: List[str] = typer.Option(
        ["auto"], "--backend", "-b",
        help="Runtime (repeatable). " + backend_help(),
    ),
    precision: List[str] = typer.Option(
        ["fp32"], "--precision", "-p",
        help="fp32 or int8 (repeatable: both are timed side by side; int8: SqueezeSR, RepSR and Compact on onnxruntime's CPU).",
    ),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch, onnxruntime and OpenCV."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Measure peak memory (on the CPU: one child process per row)."),
    tune_malloc: bool = typer.Option(
        False, "--tune-malloc",
        help="Let glibc reuse freed memory instead of unmapping it (runtime.allocator.tune_cpu_allocator) for every row.",
    ),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the records to this JSON file ('-' for stdout)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --json file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages."),
) -> int:
    """Benchmark models against bicubic (torch, OpenCV, Pillow, MATLAB-style) on one input."""
    from ..bench import parse_size, run_bench, write_json

    w, h = parse_size(size)
    model = list(model) or [DEFAULT_MODELS[check_scale(scale)]]
    # Before minutes of timing: the report must not replace a weights file timed here, or any existing file.
    check_report("--json", json_out, overwrite, inputs=[m for m in model if Path(m).expanduser().is_file()])
    if tune_malloc:
        from ..runtime.allocator import tune_cpu_allocator

        if not tune_cpu_allocator():
            raise ConfigError("--tune-malloc: this system's C library is not glibc")
    with err_console.status("benchmarking", spinner="dots") as status:
        records = run_bench(
            model, size=(w, h), scale=scale, device=device, repeat=repeat, warmup=warmup, backends=backend,
            threads=threads, memory=memory, progress=None if quiet else (lambda msg: status.update(msg)),
            precisions=precision,
        )
    if json_out:
        write_json(records, json_out, overwrite)
    if json_out != "-":
        title = (f"x{scale}, {w}x{h} -> {w * scale}x{h * scale}, {records.threads} thread(s), "
                 f"malloc {'tuned' if tune_malloc else 'default'}; dense 64-ch 3x3 conv: "
                 f"{records.conv_macs_per_s / 1e9:.1f} GMAC/s (the floor's rate)")
        out = table_console()
        out.print(render_table(records, title))
        for note in records.notes:
            out.print(f"[dim]note: {note}[/]", highlight=False)
    return 0
