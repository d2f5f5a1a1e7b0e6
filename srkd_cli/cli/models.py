"""`srkd models`: the model zoo as a table or as JSON."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import typer
from rich.table import Table

from .. import zoo
from ..config import DEFAULT_MODELS
from . import app
from .console import table_console


def _rows() -> List[Dict[str, Any]]:
    z = zoo.get_zoo()
    defaults = set(DEFAULT_MODELS.values())
    return [{**e.to_dict(), "where": z.where(e.name), "default": e.name in defaults} for e in z.list()]


def _params(n: Any) -> str:
    if not isinstance(n, int):
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.0f}K" if n >= 10_000 else str(n)


@app.command()
def models(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List the model zoo: architecture, scale, size, Set5 PSNR-Y and where the weights come from."""
    rows = _rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="srkd models", title_justify="left")
    for col, justify in (("name", "left"), ("architecture", "left"), ("scale", "right"),
                         ("parameters", "right"), ("Set5 PSNR-Y", "right"), ("source", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    published = False
    for r in rows:
        psnr = r["metrics"].get("set5_psnr_y")
        cell = "-" if psnr is None else f"{psnr:.2f}"
        if psnr is not None and "source" in r["metrics"] and "command" not in r["metrics"]:
            cell += "*"
            published = True
        table.add_row(r["name"] + (" (default)" if r["default"] else ""), r["arch"], f"x{r['scale']}", _params(r["params"]), cell, r["where"])
    from ..archs import ARCHS

    notes = ["* published figure, not measured by srkd"] if published else []
    notes += [c for c in dict.fromkeys(ARCHS[r["arch"]].caveat for r in rows if r["arch"] in ARCHS) if c]
    if notes:
        table.caption = "\n".join(notes)
    table_console().print(table)
