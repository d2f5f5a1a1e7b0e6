"""The training losses of SPEC §2. Every function returns a scalar tensor (mean over elements).

- `pixel_loss`: L1 (or MSE, `srkd train --loss mse`) between an output and its target, the loss of `srkd train`.
- `feature_kd_loss` (paper 1): `beta * sum_i d(S_i, T_i)` over the paired feature maps, with
  d = mean absolute (l1) or mean squared (mse) difference. The paper names neither the distance
  nor the weight; both are options.
- `alpha_kd_loss` (paper 2): `alpha * L1(S, HR) + (1 - alpha) * (L1(S, T) + MSE(F1_S, F1_T))`.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F

DISTANCES = ("l1", "mse")


def feature_distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    a, b = a.float(), b.float()
    if distance == "l1":
        return F.l1_loss(a, b)
    if distance == "mse":
        return F.mse_loss(a, b)
    raise ValueError(f"unknown feature distance {distance!r}: use one of {DISTANCES}")


def pixel_loss(output: torch.Tensor, target: torch.Tensor, distance: str = "l1") -> torch.Tensor:
    return feature_distance(output, target, distance)


def feature_kd_loss(
    student: Mapping[str, torch.Tensor],
    teacher: Mapping[str, torch.Tensor],
    pairs: Sequence[Tuple[str, str]],
    distance: str = "l1",
    beta: float = 1.0,
) -> torch.Tensor:
    """Paper 1's feature loss: `beta * sum over (s, t) in pairs of distance(student[s], teacher[t])`."""
    total = sum(feature_distance(student[s], teacher[t], distance) for s, t in pairs)
    return beta * total


def alpha_kd_loss(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    hr: torch.Tensor,
    student_f1: torch.Tensor,
    teacher_f1: torch.Tensor,
    alpha: float = 0.75,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Paper 2's loss and its parts: total, l1 (vs HR), kd_out (vs teacher output), kd_feat (F1 MSE)."""
    l1 = pixel_loss(student_out, hr)
    kd_out = pixel_loss(student_out, teacher_out)
    kd_feat = feature_distance(student_f1, teacher_f1, "mse")
    total = alpha * l1 + (1.0 - alpha) * (kd_out + kd_feat)
    return total, {"l1": l1, "kd_out": kd_out, "kd_feat": kd_feat}
