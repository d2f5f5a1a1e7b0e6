"""`srkd info FILE`: what a weights file is, and whether srkd can run it.

Architecture, scale, parameters, key layout, configuration and what detection had to assume,
read from the tensors alone (or from srkd's own metadata), then a real load, whose one-line
error is the reason when srkd cannot run the file. Exit 0 when it can, 1 when the file is
recognised but cannot be run, 2 when it is not a model srkd knows at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import typer
from rich.markup import escape

from ..config import SCALES, parse_settings
from ..errors import CheckpointError, SrkdError
from . import app
from .console import console


def _wrapper(raw: Any) -> Optional[str]:
    """The key a foreign file keeps its state dict under (`params_ema`, ...), or None."""
    from ..checkpoint import WRAPPER_KEYS

    path = []
    while isinstance(raw, Mapping) and raw and not all(hasattr(v, "shape") for v in raw.values()):
        key = next((k for k in WRAPPER_KEYS if k in raw and isinstance(raw[k], Mapping)), None)
        if key is None:
            break
        path.append(key)
        raw = raw[key]
    return "/".join(path) or None


def describe(path: Path, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What `srkd info` reports, as a dict; a file srkd cannot read or recognise raises SrkdError."""
    from ..archs import ARCHS, detect_arch, get_arch
    from ..checkpoint import _read_raw, canonical_state_dict, load_checkpoint
    from ..inference import default_overlap

    raw, meta = _read_raw(path)
    sd = canonical_state_dict(raw, str(path))
    params = sum(int(v.numel()) for v in sd.values() if v.is_floating_point())
    info: Dict[str, Any] = {"file": str(path), "bytes": path.stat().st_size}
    if meta.get("arch"):
        spec = get_arch(meta["arch"])
        config = json.loads(meta.get("config", "{}"))
        scale: Optional[int] = int(meta["scale"]) if str(meta.get("scale", "")).isdigit() else None
        info["format"] = f"srkd safetensors ({meta.get('format', 'srkd')})"
        info["layout"] = "srkd native (architecture and configuration in its metadata)"
    else:
        found = detect_arch(sd)
        if found is None:
            raise CheckpointError(f"{path}: not a model srkd knows ({len(sd)} tensors such as "
                                  f"{', '.join(list(sd)[:2])}); srkd knows {', '.join(ARCHS)}")
        spec, config, scale = found
        with open(path, "rb") as f:
            head = f.read(9)
        info["format"] = ("safetensors" if head[8:9] == b"{" else "PyTorch pickle") + (
            f", state dict under '{w}'" if (w := _wrapper(raw)) else "")
        info["layout"] = (spec.layout(sd) if spec.layout else None) or f"{spec.name} (srkd's own names)"
    info.update(arch=spec.name, description=spec.description, scale=scale, config=dict(config), parameters=params)
    # A real load says whether srkd can run it (and, for a multi-scale file, at which scales).
    runs: List[int] = []
    notes: List[str] = []
    reason = None
    for s in ([scale] if scale is not None else list(SCALES)):
        try:
            lm = load_checkpoint(path, scale=s, overrides=overrides)
            runs.append(lm.scale)
            config, notes = lm.config, lm.notes
        except SrkdError as e:
            reason = reason or str(e)
    info["config"] = dict(config)
    info["assumed"] = notes
    info["runs"] = bool(runs)
    if runs:
        info["scales"] = runs
        try:
            info["receptive_field"] = spec.receptive_field(config, runs[0]) if spec.receptive_field else None
            info["tile_overlap"] = default_overlap(spec, config, runs[0])
            info["bytes_per_input_pixel"] = int(spec.bytes_per_pixel(config, runs[0]))
        except (SrkdError, KeyError, ValueError):
            pass
    else:
        info["reason"] = reason
    return info


def _show(info: Dict[str, Any]) -> None:
    cfg = ", ".join(f"{k}={v}" for k, v in info["config"].items())
    size = info["bytes"] / 1e6
    rows = [
        ("file", f"{info['file']} ({size:.1f} MB, {info['format']})"),
        ("architecture", f"{info['arch']}: {info['description']}"),
        ("key layout", info["layout"]),
        ("scale", ", ".join(f"x{s}" for s in info.get("scales", [])) or (f"x{info['scale']}" if info["scale"] else "?")),
        ("parameters", f"{info['parameters']:,}"),
        ("config", cfg or "-"),
    ]
    if info.get("receptive_field") is not None:
        rows.append(("receptive field", f"{info['receptive_field']} input pixels (default tile overlap {info['tile_overlap']})"))
    if info.get("bytes_per_input_pixel"):
        rows.append(("memory", f"about {info['bytes_per_input_pixel'] / 1000:.1f} kB per input pixel (float32, whole image)"))
    for note in info["assumed"]:
        rows.append(("assumed", note))
    if info["runs"]:
        rows.append(("srkd can run it", f"yes: srkd upscale --weights {info['file']} IMAGE"))
    else:
        rows.append(("srkd can run it", f"no: {info['reason']}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        console.print(f"{k:<{width}}  {escape(str(v))}", highlight=False, soft_wrap=True)


@app.command()
def info(
    weights: Path = typer.Argument(..., help="A weights file (.safetensors or .pth)."),
    settings: Optional[List[str]] = typer.Option(None, "--set", help="Architecture option KEY=VALUE the file cannot "
                                                 "tell (e.g. act=leakyrelu); repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of lines."),
) -> int:
    """Say what a weights file is: architecture, scale, parameters, key layout, and whether srkd can run it."""
    got = describe(weights, parse_settings(settings))
    if as_json:
        typer.echo(json.dumps(got, indent=2, default=str))
    else:
        _show(got)
    return 0 if got["runs"] else 1
