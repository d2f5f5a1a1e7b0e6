"""`srkd bench`."""

import typer

from . import app
from .notbuilt import not_built


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Benchmark models against bicubic baselines (not built yet)."""
    not_built("bench", "benchmarks")
