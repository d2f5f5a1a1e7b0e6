"""`srkd train` and `srkd distill`."""

import typer

from . import app
from .notbuilt import not_built


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context) -> None:
    """Train an architecture from scratch with L1 (not built yet)."""
    not_built("train", "training engine")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def distill(ctx: typer.Context) -> None:
    """Distil a student from a frozen teacher (not built yet)."""
    not_built("distill", "training engine")
