"""`srkd export`: a model to ONNX or TorchScript, checked against PyTorch before it is written."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from . import app
from .console import console


@app.command()
def export(
    model: str = typer.Argument(..., help="A zoo model (`srkd models`) or a weights file (.safetensors or .pth)."),
    output: Path = typer.Option(..., "-o", "--output", help="The file to write (.onnx or .pt)."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx or torchscript."),
    scale: Optional[int] = typer.Option(None, "--scale", "-s", help="Pick the xS model of a family (e.g. swinir4 -s 2)."),
    opset: int = typer.Option(17, help="ONNX opset (17 or newer)."),
    fuse: bool = typer.Option(False, "--fuse", help="Re-parameterise SqueezeSR first (same outputs, fewer ops)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
    int8: bool = typer.Option(False, "--int8", help="Quantised to int8 for onnxruntime's CPU, SqueezeSR or RepSR (approximate: "
                                                     "checked to within 1.5 grey levels of fp32 on average)."),
    weight_bits: Optional[str] = typer.Option(
        None, "--weight-bits", help="With --int8: auto (this CPU's best; the default, or $SRKD_INT8_WEIGHT_BITS), 8, or 7 "
                                    "for a file that runs right on any x86 CPU (8-bit weights saturate CPUs without VNNI)."),
) -> int:
    """Export a model with dynamic batch, height and width; outputs match PyTorch to 1e-4."""
    from ..export import export as do_export

    r = do_export(model, output, fmt=fmt.lower(), scale=scale, opset=opset, fuse=fuse, overwrite=overwrite, int8=int8,
                  weight_bits=weight_bits)
    if weight_bits is not None and not int8:
        raise ConfigError("--weight-bits is for --int8 exports")
    if int8:
        console.print(f"wrote {r.path} (onnx int8, {r.arch} x{r.scale}, {r.bytes / 1e6:.2f} MB); mean difference "
                      f"from fp32 {r.max_abs_diff:.2f} grey levels", highlight=False)
        return 0
    console.print(
        f"wrote {r.path} ({r.format}, {r.arch} x{r.scale}, {r.bytes / 1e6:.2f} MB); "
        f"max difference from PyTorch {r.max_abs_diff:.1e}",
        highlight=False,
    )
    return 0
