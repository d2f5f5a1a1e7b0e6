"""What the architectures' `detect` functions share: reading a state dict without raising.

A partial or damaged file must not raise KeyError in detection: sizes are read through `size_of` and
configs built with `known`, so what cannot be read falls back to the default (or a scale of None),
and the loader then names the tensors that are missing or of the wrong shape.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Mapping, Optional

import torch

StateDict = Mapping[str, torch.Tensor]


def count(sd: StateDict, pattern: str) -> int:
    """How many distinct values group 1 of `pattern` takes over the keys (e.g. block indices)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def size_of(sd: StateDict, key: str, i: int = 0) -> Optional[int]:
    """Size `i` of tensor `key`; None where the file lacks it or it has too few dimensions."""
    t = sd.get(key)
    return int(t.shape[i]) if isinstance(t, torch.Tensor) and t.dim() > i else None


def known(**cfg: Any) -> Dict[str, Any]:
    """The options that could be read (not None); the rest keep their defaults."""
    return {k: v for k, v in cfg.items() if v is not None}


def scale_from_channels(out_channels: Optional[int], per_pixel: int = 3) -> Optional[int]:
    """The scale s of a sub-pixel conv with per_pixel * s * s outputs; None where there is none."""
    if out_channels is None:
        return None
    s = math.isqrt(out_channels // per_pixel)
    return s if s * s * per_pixel == out_channels else None
