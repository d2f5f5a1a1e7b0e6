"""Checkpoints: srkd's native safetensors files and foreign (official SwinIR) .pth files.

A native file describes itself: its safetensors metadata holds the architecture, the
config, the scale and the provenance. Foreign files are canonicalised in one place
(`canonical_state_dict`) and the architecture is inferred from key names and shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from .archs import ARCHS, ArchSpec, SRModel, detect_arch, get_arch
from .atomic import atomic_write
from .errors import CheckpointError, InputError

FORMAT_VERSION = "1"
# Buffers some releases save although they are derived from the training img_size.
DERIVED_KEYS = ("attn_mask", "relative_position_index")
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "generator")


@dataclass
class LoadedModel:
    model: SRModel
    spec: ArchSpec
    config: Dict[str, Any]
    scale: int
    metadata: Dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None


def canonical_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Unwrap `params_ema`/`params`/`state_dict`, strip `module.`, drop size-derived buffers."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise CheckpointError(f"{source}: no state dict found (expected tensors, or 'params'/'params_ema')")
    sd = {}
    for k, v in obj.items():
        while k.startswith("module."):
            k = k[len("module."):]
        if k.rsplit(".", 1)[-1] in DERIVED_KEYS:
            continue
        sd[k] = v
    return sd


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _read_raw(path: Path):
    """(state dict or wrapper, metadata) from a safetensors or torch file."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) >= 9 and head[8:9] == b"{":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            return load_file(str(path)), meta
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}
    except Exception as e:  # torch.load raises many kinds on a file that is not a checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a checkpoint srkd can read ({first[:160]})") from None


def load_checkpoint(
    path: Union[str, Path], scale: Optional[int] = None, device: Union[str, torch.device] = "cpu"
) -> LoadedModel:
    """Build the model a checkpoint describes and load its weights (eval mode, float32)."""
    path = Path(path)
    raw, meta = _read_raw(path)
    sd = canonical_state_dict(raw, str(path))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    if meta.get("arch"):
        spec = get_arch(meta["arch"])
        try:
            config = spec.config(**json.loads(meta.get("config", "{}")))
            file_scale = int(meta["scale"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: broken srkd metadata ({e})") from None
    else:
        found = detect_arch(sd)
        if found is None:
            sample = ", ".join(list(sd)[:3])
            raise CheckpointError(f"{path}: unknown architecture (keys like {sample}); srkd knows {', '.join(ARCHS)}")
        spec, config, file_scale = found
    if spec.canonicalize is not None:
        try:
            sd = spec.canonicalize(sd, scale if file_scale is None else file_scale)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        if file_scale is None:
            file_scale = scale
    if scale is not None and scale != file_scale:
        raise CheckpointError(f"{path}: this {spec.name} checkpoint upscales x{file_scale}, not x{scale}")
    model = spec.build(file_scale, **config)
    result = model.load_state_dict(sd, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing keys (e.g. {', '.join(result.missing_keys[:3])})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected keys (e.g. {', '.join(result.unexpected_keys[:3])})")
    if problems:
        raise CheckpointError(f"{path}: does not match {spec.name} x{file_scale}: {'; '.join(problems)}")
    model.eval().to(device)
    metadata = {k: v for k, v in meta.items() if k not in ("arch", "config", "scale")}
    return LoadedModel(model, spec, config, file_scale, metadata, path)



def save_checkpoint(
    path: Union[str, Path],
    model: SRModel,
    arch: str,
    config: Mapping[str, Any],
    provenance: Optional[Mapping[str, Any]] = None,
    half: bool = False,
) -> Path:
    """Write a native, self-describing safetensors file atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    spec = get_arch(arch)
    dtype = torch.float16 if half else torch.float32
    sd = {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "format": f"srkd/{FORMAT_VERSION}",
        "arch": spec.name,
        "scale": str(model.scale),
        "config": json.dumps(dict(config), sort_keys=True),
    }
    if provenance:
        meta["provenance"] = json.dumps(dict(provenance), sort_keys=True, default=str)
    return atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata=meta))
