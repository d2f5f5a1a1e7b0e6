"""`srkd export`."""

import typer

from . import app
from .notbuilt import not_built


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def export(ctx: typer.Context) -> None:
    """Export a model to ONNX or TorchScript (not built yet)."""
    not_built("export", "export")
