"""From what a user names (a zoo model, a weights file, nothing) to a ready model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from .checkpoint import LoadedModel, load_checkpoint
from .config import DEFAULT_MODELS
from .errors import CheckpointError, ConfigError



def load_model(
    model: Optional[str] = None,
    weights: Optional[Union[str, Path]] = None,
    scale: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    offline: Optional[bool] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> LoadedModel:
    """A zoo name (`swinir4`, `squeezesr-x2`) or a weights file -> LoadedModel, checked against `scale`.

    `offline` True never downloads (ModelNotFoundError when the file is neither bundled nor
    cached); None follows HF_HUB_OFFLINE. `overrides` (`--set`) set options the file cannot tell
    (`checkpoint.load_checkpoint`).
    """
    from .zoo import get_zoo

    if model and weights:
        raise ConfigError("give --model or --weights, not both")
    if weights is not None:
        return load_checkpoint(weights, scale=scale, device=device, overrides=overrides)
    zoo = get_zoo()
    if model is None:
        entry = zoo.get(DEFAULT_MODELS[scale or 4], scale=scale or 4)
    elif Path(model).expanduser().is_file():
        return load_checkpoint(Path(model).expanduser(), scale=scale, device=device, overrides=overrides)
    elif model.startswith("hf://"):  # a pinned Hub file, no zoo entry (zoo/hubid.py)
        from .zoo.hubid import resolve_hub_id

        path = resolve_hub_id(model, offline=offline, progress=not offline)
        lm = load_checkpoint(path, scale=scale, device=device, overrides=overrides)
        lm.metadata.setdefault("zoo_name", model)
        return lm
    else:
        entry = zoo.get(model, scale=scale)
    path = zoo.resolve(entry.name, offline=offline, progress=not offline)
    lm = load_checkpoint(path, scale=entry.scale, device=device, overrides=overrides)
    _check_against_entry(lm, entry, path)
    lm.metadata.setdefault("zoo_name", entry.name)
    return lm


def _check_against_entry(lm: LoadedModel, entry, path: Path) -> None:
    """The file must be the model its zoo entry describes: architecture and configuration."""
    from .archs import get_arch

    if lm.spec.name != get_arch(entry.arch).name:
        raise CheckpointError(f"{path}: zoo entry {entry.name} says arch={entry.arch}, the file holds arch={lm.spec.name}")
    wanted = lm.spec.config(**entry.config)
    differ = {k: (wanted[k], lm.config.get(k)) for k in wanted if lm.config.get(k) != wanted[k]}
    if differ:
        k, (want, got) = next(iter(differ.items()))
        raise CheckpointError(f"{path}: zoo entry {entry.name} says {k}={want}, the file has {k}={got}")
