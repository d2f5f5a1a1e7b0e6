"""The learning-rate schedule and the EMA of the weights."""

from __future__ import annotations

import copy
import math

import torch

from ..archs import SRModel

MULTISTEP_MILESTONES = (0.5, 0.8, 0.9, 0.95)  # fractions of the run; SwinIR's 250k/400k/450k/475k of 500k


def lr_at(step: int, base: float, total: int, warmup: int, schedule: str) -> float:
    """Learning rate for 0-based `step`: linear warm-up to `base`, then cosine to 0 or halvings."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    halvings = sum(step >= int(f * total) for f in MULTISTEP_MILESTONES)
    return base * 0.5**halvings


class EMA:
    """Exponential moving average of the weights; the decay ramps up so early validation is meaningful."""

    def __init__(self, model: SRModel, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: SRModel, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        ema_p = [p for p in self.model.parameters()]
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - d)
