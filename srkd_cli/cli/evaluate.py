"""`srkd eval`."""

import typer

from . import app
from .notbuilt import not_built


@app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval_(ctx: typer.Context) -> None:
    """Evaluate models on benchmark folders (not built yet)."""
    not_built("eval", "evaluation protocol")
