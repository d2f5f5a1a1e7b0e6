"""`srkd export`: a model to ONNX or TorchScript, checked against PyTorch before it is written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError, OutputError
from . import app
from .console import console


@app.command()
def export(
    model: str = typer.Argument(..., help="A zoo model (`srkd models`) or a weights file (.safetensors or .pth)."),
    output: str = typer.Option(..., "-o", "--output", help="The file to write (.onnx or .pt)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="onnx or torchscript (default: from the -o suffix, "
                                      ".onnx or .pt; else onnx)."),
    scale: Optional[int] = typer.Option(None, "--scale", "-s", help="Pick the xS model of a family (e.g. swinir4 -s 2)."),
    opset: int = typer.Option(17, help="ONNX opset (17 or newer)."),
    fuse: bool = typer.Option(False, "--fuse", help="Re-parameterise SqueezeSR first (same outputs, fewer ops)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
    int8: bool = typer.Option(False, "--int8", help="Quantised to int8 for onnxruntime's CPU, SqueezeSR, RepSR or Compact (approximate: "
                                                     "checked to within 1.5 grey levels of fp32 on average)."),
    weight_bits: Optional[str] = typer.Option(
        None, "--weight-bits", help="With --int8: auto (this CPU's best; the default, or $SRKD_INT8_WEIGHT_BITS), 8, or 7 "
                                    "for a file that runs right on any x86 CPU (8-bit weights saturate CPUs without VNNI)."),
) -> int:
    """Export a model with dynamic batch, height and width; outputs match PyTorch to 1e-4."""
    from ..export import export as do_export, format_for
    from ..runtime.graph import check_opset

    # Every check that needs no model comes first: nothing is loaded, traced or written for a typo.
    if weight_bits is not None and not int8:
        raise ConfigError("--weight-bits is for --int8 exports")
    if output.endswith(("/", os.sep)) or Path(output).is_dir():
        raise OutputError(f"-o {output}: is a folder; give a file name, e.g. {Path(output) / 'model.onnx'}")
    fmt = format_for(Path(output), fmt, int8)
    if fmt == "onnx" and not int8:
        check_opset(opset)
    r = do_export(model, Path(output), fmt=fmt, scale=scale, opset=opset, fuse=fuse, overwrite=overwrite, int8=int8,
                  weight_bits=weight_bits)
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
