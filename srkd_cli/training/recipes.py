"""What one training step computes, given a batch: `srkd train` (L1) or `srkd distill` (a student
and a frozen teacher, with paper 1's or paper 2's loss).

A recipe is called with the student as a callable `net(x) -> (output, features)` (so the trainer
may wrap it in DDP or torch.compile) and returns `(total loss, {part: scalar})`. The teacher is
held in eval mode with `requires_grad=False` and runs once per batch under `torch.no_grad`.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..archs import SRModel
from ..errors import ConfigError
from .losses import DISTANCES, alpha_kd_loss, feature_kd_loss, pixel_loss

StudentFn = Callable[[torch.Tensor], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]
Losses = Tuple[torch.Tensor, Dict[str, torch.Tensor]]


class Recipe:
    """L1 to the HR patch: `srkd train`."""

    name = "l1"
    student_features: Tuple[str, ...] = ()
    teacher_features: Tuple[str, ...] = ()
    teacher: Optional[SRModel] = None

    def __call__(self, net: StudentFn, lr: torch.Tensor, hr: torch.Tensor) -> Losses:
        out, _ = net(lr)
        loss = pixel_loss(out, hr)
        return loss, {"l1": loss}

    def describe(self) -> Dict[str, object]:
        return {"recipe": self.name}


def freeze(teacher: SRModel) -> SRModel:
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class _Distill(Recipe):
    def __init__(self, teacher: SRModel):
        self.teacher = freeze(teacher)

    def run_teacher(self, lr: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        assert self.teacher is not None
        with torch.no_grad():
            return self.teacher.forward_with_features(lr, self.teacher_features)


class FeatureKD(_Distill):
    """Paper 1: L1(S, HR) + beta * sum_i d(S_i, T_i) over the paired block outputs."""

    name = "paper1-feature-kd"

    def __init__(self, teacher: SRModel, pairs: List[Tuple[str, str]], distance: str = "l1", beta: float = 0.1):
        super().__init__(teacher)
        if distance not in DISTANCES:
            raise ConfigError(f"--feat-loss {distance}: use one of {', '.join(DISTANCES)}")
        if beta < 0:
            raise ConfigError(f"--feat-weight {beta}: must be >= 0")
        self.pairs, self.distance, self.beta = pairs, distance, beta
        self.student_features = tuple(s for s, _ in pairs)
        self.teacher_features = tuple(t for _, t in pairs)

    def __call__(self, net: StudentFn, lr: torch.Tensor, hr: torch.Tensor) -> Losses:
        _, t_feats = self.run_teacher(lr)
        out, s_feats = net(lr)
        l1 = pixel_loss(out, hr)
        feat = feature_kd_loss(s_feats, t_feats, self.pairs, self.distance, self.beta)
        return l1 + feat, {"l1": l1, "feat": feat}

    def describe(self) -> Dict[str, object]:
        return {"recipe": self.name, "pairs": self.pairs, "feat_loss": self.distance, "feat_weight": self.beta}


class AlphaKD(_Distill):
    """Paper 2: alpha * L1(S, HR) + (1 - alpha) * (L1(S, T) + MSE(F1_S, F1_T))."""

    name = "paper2-alpha-kd"
    student_features = ("F1",)
    teacher_features = ("F1",)

    def __init__(self, teacher: SRModel, alpha: float = 0.75):
        super().__init__(teacher)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"--alpha {alpha}: must lie in [0, 1]")
        self.alpha = alpha

    def __call__(self, net: StudentFn, lr: torch.Tensor, hr: torch.Tensor) -> Losses:
        t_out, t_feats = self.run_teacher(lr)
        out, s_feats = net(lr)
        return alpha_kd_loss(out, t_out, hr, s_feats["F1"], t_feats["F1"], self.alpha)

    def describe(self) -> Dict[str, object]:
        return {"recipe": self.name, "alpha": self.alpha}


PAIRS = frozenset({("squeezesr", "edsr-t"), ("swinir", "swinir")})  # (student, teacher): paper 1, paper 2


def check_pair(student_arch: str, teacher_arch: str) -> None:
    """The (student, teacher) pairs a recipe covers: paper 1's and paper 2's."""
    if (student_arch, teacher_arch) not in PAIRS:
        raise ConfigError(
            f"--student {student_arch} does not fit a {teacher_arch} teacher: "
            "paper 1 distils squeezesr from edsr-t, paper 2 distils swinir from swinir"
        )


def make_distill_recipe(
    student_arch: str,
    student: SRModel,
    teacher_arch: str,
    teacher: SRModel,
    alpha: float = 0.75,
    feat_loss: str = "l1",
    feat_weight: float = 0.1,
) -> Recipe:
    """The recipe for a (teacher, student) pair, checked on a probe batch so mismatches fail before training."""
    if teacher.scale != student.scale:
        raise ConfigError(f"--teacher upscales x{teacher.scale} but the student is built for --scale {student.scale}")
    check_pair(student_arch, teacher_arch)
    if teacher_arch == "edsr-t" and student_arch == "squeezesr":
        s_names, t_names = student.feature_names, teacher.feature_names
        if len(s_names) != len(t_names):
            raise ConfigError(
                f"--student-blocks {len(s_names)}: paper 1 pairs each student block with a teacher block "
                f"and this teacher has {len(t_names)}"
            )
        recipe: Recipe = FeatureKD(teacher, list(zip(s_names, t_names)), feat_loss, feat_weight)
    else:
        recipe = AlphaKD(teacher, alpha)
    _probe(recipe, student)
    return recipe


def _probe(recipe: Recipe, student: SRModel) -> None:
    """Compare the paired features' shapes on a small input."""
    assert recipe.teacher is not None
    ws = max(getattr(recipe.teacher, "window_size", 1), getattr(student, "window_size", 1))
    p = next(student.parameters())
    side = 2 * ws if ws > 1 else 8
    x = torch.full((1, 3, side, side), 0.5, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        _, t_feats = recipe.teacher.forward_with_features(x, recipe.teacher_features)
        _, s_feats = student.forward_with_features(x, recipe.student_features)
    for s, t in zip(recipe.student_features, recipe.teacher_features):
        if s_feats[s].shape != t_feats[t].shape:
            raise ConfigError(
                f"the student's feature {s} {tuple(s_feats[s].shape[1:])} cannot be matched to the teacher's "
                f"{t} {tuple(t_feats[t].shape[1:])}: give the student the teacher's width"
            )


def copy_matching(model: nn.Module, source: Dict[str, torch.Tensor]) -> Tuple[List[str], List[str]]:
    """Copy every tensor of `source` that `model` holds under the same name and shape.

    Returns (copied keys, model keys left as they were).
    """
    own = model.state_dict()
    copied = [k for k, v in own.items() if k in source and source[k].shape == v.shape]
    with torch.no_grad():
        for k in copied:
            own[k].copy_(source[k])
    return copied, [k for k in own if k not in set(copied)]


def init_from_teacher(student: SRModel, teacher: SRModel) -> List[str]:
    """Copy every student weight from the teacher, which must hold all of them (same name and shape).

    For SwinIR students this is the head (conv_first, patch_embed), the first k RSTBs, the final
    norm, conv_after_body and the upsampler. A partial copy is an error, never silent.
    """
    t_sd = teacher.state_dict()
    s_sd = student.state_dict()
    bad = [k for k, v in s_sd.items() if k not in t_sd or t_sd[k].shape != v.shape]
    if bad:
        raise ConfigError(
            f"--init-from-teacher: the teacher has no weights matching the student's {', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''} (the student must be the teacher with fewer blocks)"
        )
    return copy_matching(student, t_sd)[0]


def init_from_weights(model: SRModel, source: SRModel, name: str) -> str:
    """`--init`: start from another model's weights (e.g. x4 from x2's body); a note of what was copied."""
    copied, kept = copy_matching(model, source.state_dict())
    if not copied:
        raise ConfigError(f"--init {name}: no tensor matches this model's names and shapes")
    note = f"--init {name}: copied {len(copied)} of {len(copied) + len(kept)} tensors"
    return note + (f"; kept fresh: {', '.join(kept[:4])}{' ...' if len(kept) > 4 else ''}" if kept else "")


class WithFeatures(nn.Module):
    """`forward(x) -> (output, features)`, so DDP and torch.compile see the features as the forward's output."""

    def __init__(self, model: SRModel, names: Tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, tuple(names)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if not self.names:
            return self.model(x), {}
        return self.model.forward_with_features(x, self.names)
