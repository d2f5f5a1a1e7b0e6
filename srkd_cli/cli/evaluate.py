"""`srkd eval`: PSNR/SSIM of models (and bicubic, and other tools' outputs) on benchmark folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..atomic import check_report, write_report
from ..backends import backend_help, build_upscaler
from ..config import check_scale
from ..errors import ConfigError, OutputError
from ..evaluate import EvalRecord, as_read, bicubic_upscaler, evaluate_folder, hr_folder, load_pairs
from ..imaging.io import list_images
from ..inference import pick_device
from ..loader import load_model
from . import app
from .console import note, table_console


def records_table(records: List[EvalRecord], title: str) -> Table:
    table = Table(title=title)
    for col in ("dataset", "model", "PSNR-Y", "SSIM-Y", "PSNR-RGB", "SSIM-RGB", "images", "seconds"):
        table.add_column(col, justify="left" if col in ("dataset", "model") else "right")
    for r in records:
        table.add_row(r.dataset, r.model, f"{r.psnr_y:.2f}", f"{r.ssim_y:.4f}", f"{r.psnr_rgb:.2f}", f"{r.ssim_rgb:.4f}", str(r.n_images), f"{r.seconds:.2f}")
    return table


@app.command("eval")
def eval_(
    data: List[Path] = typer.Option(..., "--data", "-d", help="Benchmark folder(s): HR/ and optionally LR_bicubic/X{s}/."),
    scale: int = typer.Option(..., "--scale", "-s", help="2, 3 or 4."),
    model: List[str] = typer.Option([], "--model", "-m", help="Zoo model(s); 'bicubic' is the baseline. Repeatable."),
    weights: List[Path] = typer.Option([], "--weights", "-w", help="Weights file(s). Repeatable."),
    sr: List[Path] = typer.Option([], "--sr", help="Folder(s) of images another tool produced, named like the HR files."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the records as JSON to this file."),
    per_image: bool = typer.Option(False, help="Include per-image scores in the JSON."),
    save_images: Optional[Path] = typer.Option(None, help="Save outputs as DIR/{dataset}/{model}/{stem}.png (never "
                                               "over an input)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N, mps."),
    backend: str = typer.Option("auto", "--backend", help=backend_help(upscale=True) + " As `srkd upscale` runs them."),
    precision: str = typer.Option("fp32", help="fp32, fp16 (GPU), bf16 or int8 (SqueezeSR, RepSR or Compact on onnxruntime), as `srkd upscale`."),
    overwrite: bool = typer.Option(False, help="Replace an existing --json file."),
) -> int:
    """Evaluate models on benchmark folders with the field's protocol (Y and RGB, border = scale)."""
    check_scale(scale)
    if not (model or weights or sr):
        raise ConfigError("name something to evaluate: --model NAME (or bicubic), --weights PATH or --sr DIR")
    check_report("--json", json_out, overwrite, inputs=weights, input_folders=[*data, *sr])
    dev = pick_device(device)
    candidates = []  # (label, upscale fn or None, sr_dir)

    def upscaler(lm):
        # Exactly what `srkd upscale` runs with the same --backend/--precision/--device, on its input.
        up, _ = build_upscaler(lm, backend, precision, dev, say=note)
        return lambda lr: up(as_read(lr))

    suffix = "" if precision == "fp32" else f" ({precision})"
    for name in model:
        if name.lower() == "bicubic":
            candidates.append(("bicubic", bicubic_upscaler(scale), None))
        else:
            lm = load_model(name, None, scale, dev)
            candidates.append((lm.metadata.get("zoo_name", name) + suffix, upscaler(lm), None))
    for w in weights:
        lm = load_model(None, w, scale, dev)
        candidates.append((w.stem + suffix, upscaler(lm), None))
    for d in sr:
        if not d.is_dir():
            raise ConfigError(f"--sr {d}: no such folder")
        candidates.append((f"sr:{d.name}", None, d))
    saved = _saved_images(save_images, data, [label for label, fn, _ in candidates if fn is not None], weights, sr)
    check_report("--json", json_out, overwrite, inputs=weights, outputs=saved, input_folders=[*data, *sr])
    records = []
    for folder in data:
        pairs = load_pairs(folder, scale)
        for label, fn, sr_dir in candidates:
            save = save_images / folder.name / _folder_name(label) if save_images else None
            records.append(evaluate_folder(fn, label, folder, scale, pairs=pairs, sr_dir=sr_dir, save_dir=save))
    table_console().print(records_table(records, f"x{scale}, PSNR (dB) and SSIM, border crop {scale}"))
    if json_out:
        write_report("--json", json_out, json.dumps([r.to_dict(per_image) for r in records], indent=2) + "\n", overwrite)
    return 0


def _folder_name(label: str) -> str:
    return label.replace(":", "_")


def _saved_images(save_images: Optional[Path], data: List[Path], labels: List[str], weights: List[Path],
                  sr: List[Path]) -> List[Path]:
    """The files `--save-images` will write, refused before any work when one of them is an
    input: an HR or LR image (DIR the data folder's parent, and a model named HR), a weights file."""
    if save_images is None:
        return []
    if save_images.exists() and not save_images.is_dir():
        raise OutputError(f"--save-images {save_images}: is a file; give a folder")
    inputs = {w.resolve() for w in weights}
    for folder in [*data, *sr]:
        if folder.is_dir():
            inputs.update(p.resolve() for p in folder.rglob("*") if p.is_file())
    targets = []
    for folder in data:
        stems = [p.stem for p in list_images(hr_folder(folder))] if folder.is_dir() else []
        for label in labels:
            for stem in stems:
                target = save_images / folder.name / _folder_name(label) / f"{stem}.png"
                if target.resolve() in inputs:
                    raise OutputError(f"--save-images {save_images}: would write {target}, an input of this run "
                                      "(give another folder)")
                targets.append(target)
    return targets
