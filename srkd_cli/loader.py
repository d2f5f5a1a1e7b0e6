"""From what a user names (a zoo model, a weights file, nothing) to a ready model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import torch

from .checkpoint import LoadedModel, load_checkpoint
from .config import DEFAULT_MODELS
from .errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from .zoo import ModelRef


def load_model(
    model: Union[str, ModelRef, None] = None,
    weights: Optional[Union[str, Path]] = None,
    scale: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    offline: Optional[bool] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> LoadedModel:
    """A zoo name (`swinir4`, `squeezesr-x2`) or a weights file -> LoadedModel, checked against `scale`.

    What `model` names is decided by `Zoo.identify` alone; a caller that already asked it may
    pass its ModelRef. The result carries the zoo entry (`entry`, None for a file) and the
    file's `sha256`, hashed at most once (a verified zoo file is not hashed again).
    `offline` True never downloads (ModelNotFoundError when the file is neither bundled nor
    cached); None follows HF_HUB_OFFLINE. `overrides` (`--set`) set options the file cannot tell
    (`checkpoint.load_checkpoint`).
    """
    from .zoo import ModelRef, get_zoo

    if model and weights:
        raise ConfigError("give --model or --weights, not both")
    if weights is not None:
        return load_checkpoint(weights, scale=scale, device=device, overrides=overrides)
    zoo = get_zoo()
    if model is None:
        name = DEFAULT_MODELS[scale or 4]
        ref = ModelRef(name, entry=zoo.get(name, scale=scale or 4))
    elif isinstance(model, ModelRef):
        ref = model
    else:
        ref = zoo.identify(model, scale=scale)
    path, sha256 = zoo.fetch(ref, offline=offline, progress=not offline)
    entry = ref.entry
    lm = load_checkpoint(path, scale=entry.scale if entry else scale, device=device, overrides=overrides)
    if entry is not None:
        _check_against_entry(lm, entry, path)
        lm.metadata.setdefault("zoo_name", entry.name)
    elif ref.hub_id is not None:  # a pinned Hub file, no zoo entry (zoo/hubid.py)
        lm.metadata.setdefault("zoo_name", ref.hub_id)
    lm.entry = entry
    lm._sha256 = sha256
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
