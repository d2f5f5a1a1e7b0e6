"""What one training step computes, given a batch: `srkd train` (L1) or `srkd distill` (a student
and a frozen teacher, with paper 1's or paper 2's loss).

A recipe is called with the student as a callable `net(x) -> (output, features)` (so the trainer
may wrap it in DDP or torch.compile) and returns `(total loss, {part: scalar})`. The teacher is
held in eval mode with `requires_grad=False` and runs once per batch under `torch.no_grad`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..archs import SRModel
from ..config import a_or_an, or_list
from ..errors import ConfigError
from .losses import DISTANCES, alpha_kd_loss, feature_kd_loss, pixel_loss

StudentFn = Callable[[torch.Tensor], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]
Losses = Tuple[torch.Tensor, Dict[str, torch.Tensor]]


Teacher = Tuple[torch.Tensor, Dict[str, torch.Tensor]]  # (output or None, features) of the frozen teacher


class Recipe:
    """The pixel loss to the HR patch (`srkd train --loss`: l1 or mse)."""

    name = "l1"
    student_features: Tuple[str, ...] = ()
    teacher_features: Tuple[str, ...] = ()
    needs_teacher_output = False
    teacher: Optional[SRModel] = None
    adapters: Optional[nn.ModuleDict] = None  # trained with the student, never exported

    def __init__(self, loss: str = "l1"):  # checked by check_config (--loss)
        self.name = loss  # resume compares recipe names: an L1 state does not go on as MSE

    def __call__(self, net: StudentFn, lr: torch.Tensor, hr: torch.Tensor, cached: Optional[Teacher] = None) -> Losses:
        out, _ = net(lr)
        loss = pixel_loss(out, hr, self.name)
        return loss, {self.name: loss}

    def describe(self) -> Dict[str, object]:
        return {"recipe": self.name}


def freeze(teacher: SRModel) -> SRModel:
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class _Distill(Recipe):
    teacher_only = False  # --teacher-only: no HR; the teacher's output is the pixel target

    def __init__(self, teacher: SRModel):
        self.teacher = freeze(teacher)
        self.adapters = nn.ModuleDict()  # filled by _probe where feature widths differ

    def use_teacher_only(self) -> None:
        """--teacher-only: every HR term of the loss takes the teacher's output instead."""
        self.teacher_only = True
        self.needs_teacher_output = True

    def run_teacher(self, lr: torch.Tensor) -> Teacher:
        assert self.teacher is not None
        with torch.no_grad():
            return self.teacher.forward_with_features(lr, self.teacher_features)

    def targets(self, lr: torch.Tensor, cached: Optional[Teacher]) -> Teacher:
        """The teacher's output and features for this batch: from the teacher cache, or run live."""
        if cached is None:
            return self.run_teacher(lr)
        out, feats = cached
        return (None if out is None else out.float()), {k: v.float() for k, v in feats.items()}


class FeatureKD(_Distill):
    """Paper 1: L1(S, HR) + beta * sum_i d(A_i(S_i), T_i) [+ gamma * L1(S, T_out)].

    A_i is a learned 1x1 convolution where a student feature has fewer or more channels than its
    teacher feature, else the identity. gamma > 0 adds paper 2's output-distillation term.
    """

    name = "paper1-feature-kd"

    def __init__(self, teacher: SRModel, pairs: List[Tuple[str, str]], distance: str = "l1", beta: float = 0.1,
                 out_weight: float = 0.0):
        super().__init__(teacher)
        if distance not in DISTANCES:
            raise ConfigError(f"--feat-loss {distance}: use one of {', '.join(DISTANCES)}")
        if beta < 0:
            raise ConfigError(f"--feat-weight {beta}: must be >= 0")
        if out_weight < 0:
            raise ConfigError(f"--out-weight {out_weight}: must be >= 0")
        # No pairs (a teacher that only lends its output): no feature term, whatever beta says.
        self.pairs, self.distance, self.beta, self.out_weight = pairs, distance, (beta if pairs else 0.0), out_weight
        if not pairs:
            self.name = "output-kd"  # L1(S, HR) + gamma L1(S, T): paper 2's output term alone
        self.student_features = tuple(s for s, _ in pairs) if beta > 0 else ()
        self.teacher_features = tuple(t for _, t in pairs) if beta > 0 else ()
        self.needs_teacher_output = out_weight > 0

    def __call__(self, net: StudentFn, lr: torch.Tensor, hr: torch.Tensor, cached: Optional[Teacher] = None) -> Losses:
        t_out, t_feats = self.targets(lr, cached)
        out, s_feats = net(lr)
        if self.teacher_only:  # the teacher's output is the only pixel target
            parts = {"kd_out": pixel_loss(out, t_out)}
            total = parts["kd_out"]
        else:
            l1 = pixel_loss(out, hr)
            parts = {"l1": l1}
            total = l1
        if self.beta > 0:
            parts["feat"] = feature_kd_loss(s_feats, t_feats, self.pairs, self.distance, self.beta)
            total = total + parts["feat"]
        if self.out_weight > 0 and not self.teacher_only:
            parts["kd_out"] = pixel_loss(out, t_out)
            total = total + self.out_weight * parts["kd_out"]
        return total, parts

    def describe(self) -> Dict[str, object]:
        return {"recipe": self.name, "pairs": self.pairs, "feat_loss": self.distance, "feat_weight": self.beta,
                "out_weight": self.out_weight, "adapters": sorted(self.adapters.keys()), "teacher_only": self.teacher_only}


class AlphaKD(_Distill):
    """Paper 2: alpha * L1(S, HR) + (1 - alpha) * (L1(S, T) + MSE(F1_S, F1_T))."""

    name = "paper2-alpha-kd"
    student_features = ("F1",)
    teacher_features = ("F1",)
    needs_teacher_output = True

    def __init__(self, teacher: SRModel, alpha: float = 0.75):
        super().__init__(teacher)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"--alpha {alpha}: must lie in [0, 1]")
        self.alpha = alpha

    def __call__(self, net: StudentFn, lr: torch.Tensor, hr: torch.Tensor, cached: Optional[Teacher] = None) -> Losses:
        t_out, t_feats = self.targets(lr, cached)
        out, s_feats = net(lr)
        # --teacher-only: the teacher's output stands for HR, so alpha's two L1 terms are one
        return alpha_kd_loss(out, t_out, t_out if self.teacher_only else hr, s_feats["F1"], t_feats["F1"], self.alpha)

    def describe(self) -> Dict[str, object]:
        return {"recipe": self.name, "alpha": self.alpha, "teacher_only": self.teacher_only}


def _numbered_pairs(student: SRModel, teacher: SRModel) -> List[Tuple[str, str]]:
    """S1..Sn with T1..Tn: each student block learns the teacher feature of the same number."""
    s_names = [n for n in student.feature_names if n.startswith("S")]
    t_names = [n for n in teacher.feature_names if n.startswith("T")]
    if len(s_names) != len(t_names):
        raise ConfigError(
            f"--student-blocks {len(s_names)}: paper 1 pairs each student block with a teacher feature "
            f"and this teacher has {len(t_names)} ({', '.join(t_names)})"
        )
    return list(zip(s_names, t_names))


def _squeezesr_width(n_feats: int, **more: object) -> Dict[str, object]:
    """A SqueezeSR as wide as the teacher, squeeze and expand in the default 64/16/32 proportions."""
    return {"n_feats": n_feats, "squeeze": max(1, n_feats // 4), "expand1x1": max(1, n_feats // 2), **more}


def _thirds_pairs(student: SRModel, teacher: SRModel) -> List[Tuple[str, str]]:
    """S1..S3 with T1..T3 where the teacher's are at the input size (ESRGAN and Compact: the ends of
    each third of their trunk); none (output KD alone) where it has fewer or works unshuffled."""
    s_names = [n for n in student.feature_names if n in ("S1", "S2", "S3")]
    t_names = [n for n in teacher.feature_names if n in ("T1", "T2", "T3")]
    if len(s_names) != 3 or len(t_names) != 3 or getattr(teacher, "unshuffle", 1) != 1:
        return []
    return list(zip(s_names, t_names))


@dataclass(frozen=True)
class Pairing:
    """How a student architecture learns from a teacher architecture."""

    recipe: str  # "feature" (paper 1) or "alpha" (paper 2)
    student_config: Callable[[Dict[str, object]], Dict[str, object]]  # teacher config -> student defaults
    features: Callable[[SRModel, SRModel], List[Tuple[str, str]]]  # (student feature, teacher feature)
    note: str
    shares_weights: bool = False  # --init-from-teacher can copy the student's weights from the teacher
    out_weight: float = 0.0  # gamma when --out-weight is not given (with feature pairs; without: OUTPUT_KD_WEIGHT)


ANY_TEACHER = "*"  # a pairing for a student and every teacher without a pairing of its own
ANY_STUDENT = "*"  # with ANY_TEACHER: the fallback for every pair not in the table
OUTPUT_KD_WEIGHT = 1.0  # gamma of an output-only pairing when --out-weight is not given

# (student, teacher) -> pairing: the one table of what distils from what.
PAIRINGS: Dict[Tuple[str, str], Pairing] = {
    ("squeezesr", "edsr-t"): Pairing(
        "feature", lambda t: _squeezesr_width(int(t["n_feats"]), blocks=t["blocks"]), _numbered_pairs,
        "paper 1: S1..S3 learn EDSR-T's T1..T3"),
    ("squeezesr", "imdn"): Pairing(
        "feature", lambda t: {"blocks": int(t["blocks"]) // 2}, _numbered_pairs, "paper 1's recipe: S1..S3 learn IMDN's blocks 2, 4, 6 (T1..T3)"),
    ("squeezesr", "carn-m"): Pairing(
        "feature", lambda t: {"blocks": 3}, _numbered_pairs,
        "paper 1's recipe: S1..S3 learn CARN-M's three cascade outputs (T1..T3)"),
    ("squeezesr", "bsrn"): Pairing(
        "feature", lambda t: {"blocks": 3}, _numbered_pairs,
        "paper 1's recipe: S1..S3 learn BSRN's blocks 3, 5, 8 (T1..T3)"),
    # srkd's plain re-parameterised family: paper 1's recipe (its S1..S3 are a third, two thirds and
    # the end of its stack; 1x1 adapters bridge the widths), usually with the output term alone.
    ("repsr", "bsrn"): Pairing(
        "feature", lambda t: {}, _numbered_pairs, "S1..S3 (RepSR's layers at 1/3, 2/3, end) learn BSRN's T1..T3"),
    ("repsr", "imdn"): Pairing(
        "feature", lambda t: {}, _numbered_pairs, "S1..S3 (RepSR's layers at 1/3, 2/3, end) learn IMDN's T1..T3"),
    # The Real-ESRGAN families (users' own models): their output is what a student is there to learn,
    # so the output term is on by default, with paper 1's feature pairs at the thirds of both trunks.
    **{(student, teacher): Pairing(
        "feature", lambda t: {}, _thirds_pairs,
        f"S1..S3 learn {teacher}'s T1..T3 (ends of each third of its trunk) and its output (--out-weight 1)",
        out_weight=1.0)
       for student in ("repsr", "squeezesr") for teacher in ("esrgan", "compact")},
    ("swinir", "swinir"): Pairing(
        "alpha", lambda t: {**t, "blocks": max(1, int(t["blocks"]) - 1)}, lambda s, t: [("F1", "F1")],
        "paper 2: a SwinIR with fewer RSTBs learns the teacher's output and F1", shares_weights=True),
    # Any other teacher (e.g. BSRN for research/gpu/gpu_run.py's SwinIR teacher): its output alone,
    # L1(S, HR) + gamma L1(S, T) with gamma = --out-weight; no feature of another architecture matches F1.
    ("swinir", ANY_TEACHER): Pairing(
        "feature", lambda t: {}, lambda s, t: [],
        "a SwinIR learns another architecture's output (--out-weight > 0), no features"),
    # Every other pair, any teacher srkd can load (ESRGAN, Real-ESRGAN Compact, ...): output KD,
    # L1(S, HR) + gamma L1(S, T) (gamma = --out-weight, default 1), or L1(S, T) alone with
    # --teacher-only. Feature KD needs a pairing above: srkd must know both sides' features.
    (ANY_STUDENT, ANY_TEACHER): Pairing(
        "feature", lambda t: {}, lambda s, t: [],
        "output KD: the student learns the teacher's output, no features"),
}


def get_pairing(student_arch: str, teacher_arch: str) -> Pairing:
    """The pairing for (student, teacher), or a ConfigError listing the pairs srkd knows."""
    pairing = (PAIRINGS.get((student_arch, teacher_arch)) or PAIRINGS.get((student_arch, ANY_TEACHER))
               or PAIRINGS.get((ANY_STUDENT, ANY_TEACHER)))
    if pairing is None:
        known = "; ".join(f"--student {s} from {'any other' if t == ANY_TEACHER else a_or_an(t)} teacher" for s, t in PAIRINGS)
        raise ConfigError(f"--student {student_arch} does not fit {a_or_an(teacher_arch)} teacher: srkd distils {known}")
    return pairing


def pairings_help() -> str:
    """--student's help, from PAIRINGS, so it lists every pair."""
    ways: Dict[str, Dict[str, List[str]]] = {}  # student -> recipe -> teachers
    for (student, teacher), pairing in PAIRINGS.items():
        if student == ANY_STUDENT:
            continue  # said once, below
        how = ("paper 2's recipe" if pairing.recipe == "alpha" else "its output alone, --out-weight"
               if teacher == ANY_TEACHER else "paper 1's recipe")
        ways.setdefault(student, {}).setdefault(how, []).append("any other" if teacher == ANY_TEACHER else teacher)
    return "Student architecture: " + "; ".join(
        f"{student} from " + " or ".join(f"{or_list(teachers)} ({how})" for how, teachers in by.items())
        for student, by in ways.items()) + "; any other pair: output KD (any teacher srkd loads)."


def check_pair(student_arch: str, teacher_arch: str) -> None:
    get_pairing(student_arch, teacher_arch)


def make_distill_recipe(
    student_arch: str,
    student: SRModel,
    teacher_arch: str,
    teacher: SRModel,
    alpha: float = 0.75,
    feat_loss: str = "l1",
    feat_weight: float = 0.1,
    out_weight: Optional[float] = None,
    teacher_only: bool = False,
) -> Recipe:
    """The recipe for a (teacher, student) pair, checked on a probe batch so mismatches fail before training.

    `out_weight` None: the pairing's default (0 with feature pairs, OUTPUT_KD_WEIGHT without).
    `teacher_only`: no HR; the teacher's output replaces HR in every term (--teacher-only)."""
    if teacher.scale != student.scale:
        raise ConfigError(f"--teacher upscales x{teacher.scale} but the student is built for --scale {student.scale}")
    pairing = get_pairing(student_arch, teacher_arch)
    if pairing.recipe == "feature":
        pairs = pairing.features(student, teacher)
        if out_weight is None:
            out_weight = 0.0 if teacher_only else (pairing.out_weight if pairs else OUTPUT_KD_WEIGHT)
        if not pairs and not out_weight > 0 and not teacher_only:
            raise ConfigError(f"--out-weight {out_weight}: {a_or_an(student_arch)} student shares no feature with {a_or_an(teacher_arch)} "
                              "teacher and learns only its output; give --out-weight > 0")
        recipe: Recipe = FeatureKD(teacher, pairs, feat_loss, feat_weight, out_weight)
    else:
        recipe = AlphaKD(teacher, alpha)
    if teacher_only:
        recipe.use_teacher_only()
    _probe(recipe, student)
    return recipe


def _probe(recipe: Recipe, student: SRModel) -> None:
    """Compare the paired features' shapes on a small input; differing channel counts get a 1x1 adapter."""
    assert recipe.teacher is not None and recipe.adapters is not None
    ws = max(getattr(recipe.teacher, "window_size", 1), getattr(student, "window_size", 1))
    p = next(student.parameters())
    side = 2 * ws if ws > 1 else 8
    x = torch.full((1, 3, side, side), 0.5, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        _, t_feats = recipe.teacher.forward_with_features(x, recipe.teacher_features)
        _, s_feats = student.forward_with_features(x, recipe.student_features)
    for s, t in zip(recipe.student_features, recipe.teacher_features):
        s_shape, t_shape = tuple(s_feats[s].shape[1:]), tuple(t_feats[t].shape[1:])
        if s_shape == t_shape:
            continue
        if s_shape[1:] != t_shape[1:] or s_feats[s].dim() != 4:
            raise ConfigError(
                f"the student's feature {s} {s_shape} cannot be matched to the teacher's {t} {t_shape}: "
                "their sizes differ"
            )
        # FitNets' regressor: the student's features are mapped to the teacher's width for the loss only.
        recipe.adapters[s] = nn.Conv2d(s_shape[0], t_shape[0], 1).to(device=p.device, dtype=p.dtype)


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
    """`forward(x) -> (output, features)`, so DDP and torch.compile see the features as the forward's output.

    The recipe's adapters live here, beside the model, so they train (and synchronise under DDP)
    with it; exporting `model` leaves them behind.
    """

    def __init__(self, model: SRModel, names: Tuple[str, ...], adapters: Optional[nn.ModuleDict] = None):
        super().__init__()
        self.model, self.names = model, tuple(names)
        self.adapters = adapters if adapters is not None else nn.ModuleDict()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if not self.names:
            return self.model(x), {}
        out, feats = self.model.forward_with_features(x, self.names)
        return out, {k: self.adapters[k](v) if k in self.adapters else v for k, v in feats.items()}
