"""`srkd upscale`."""

import typer

from . import app
from .notbuilt import not_built


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def upscale(ctx: typer.Context) -> None:
    """Upscale images (not built yet)."""
    not_built("upscale", "package")
