"""The arithmetic behind `research/gpu/gpu_run.py`: budget split, step plans, the compile guard, rates.

Pure functions only (no CUDA, no files), so every decision the GPU run takes can be tested on a
CPU: which precision, how many seconds and steps each stage gets, whether torch.compile pays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

# The stages in the order they run, with their default share of the training time.
# EDSR-T x2 trains from scratch and gets most; x3/x4 start from its body and only re-learn the
# tail; the students are small, but each KD step also runs the teacher's forward pass.
DEFAULT_SHARES: Dict[str, float] = {
    "edsr-t-x2": 0.46,
    "edsr-t-x3": 0.12,
    "edsr-t-x4": 0.12,
    "squeezesr-kd-x2": 0.12,
    "squeezesr-kd-x3": 0.09,
    "squeezesr-kd-x4": 0.09,
}
# A forward pass without autograd costs about a third of forward + backward + optimiser step.
TEACHER_FORWARD_FRACTION = 1.0 / 3.0

# ---------------------------------------------------------------------------------------------- plans

PLANS = ("paper1", "paper2", "all")
P2_SCALES: Tuple[int, ...] = (2, 3, 4)
P2_STUDENTS: Tuple[int, ...] = (3, 2, 1)  # RSTBs of paper 2's students
P2_TEACHER_BLOCKS = 4
# Paper 2's default shares. A KD stage's share pays for its twin too (both train the same steps),
# so twins have none of their own. x2's teacher trains from scratch and gets most; x3/x4's start
# from its body; students start from their teacher's weights and only fine-tune.
P2_TEACHER_SHARES: Dict[int, float] = {2: 0.44, 3: 0.08, 4: 0.08}
P2_PAIR_SHARES: Dict[int, Dict[int, float]] = {
    2: {3: 0.08, 2: 0.07, 1: 0.05},
    3: {3: 0.04, 2: 0.035, 1: 0.025},
    4: {3: 0.04, 2: 0.035, 1: 0.025},
}


def p2_teacher_name(scale: int) -> str:
    """srkd's own 4-RSTB SwinIR-light; `swinir4-x{s}` stays the official release's name."""
    return f"swinir4-srkd-x{scale}"


def p2_student_name(blocks: int, scale: int, kd: bool) -> str:
    """`swinir-s3-kd-x2` (distilled) or `swinir-s3-x2` (its no-KD twin)."""
    return f"swinir-s{blocks}{'-kd' if kd else ''}-x{scale}"


@dataclass(frozen=True)
class StageSpec:
    """One stage of a plan: what it trains, from which weights, taught by what.

    `name` is the run folder, the weights file and the zoo name it would be bundled under.
    role: "teacher" (L1 on HR, from scratch or from `init`), "kd" (distilled from the stage
    `teacher`), "twin" (the KD stage `twin_of` without distillation: same start, same steps).
    `init` is copied where present (tensors of matching name and shape) unless `init_required`,
    when the stage is skipped without it; `from_teacher` starts a student from its teacher's
    head, first `blocks` RSTBs and tail.
    """

    name: str
    arch: str
    scale: int
    role: str
    paper: int
    blocks: Optional[int] = None
    teacher: Optional[str] = None
    init: Optional[str] = None
    init_required: bool = False
    from_teacher: bool = False
    twin_of: Optional[str] = None

    @property
    def kd(self) -> bool:
        return self.role == "kd"

    def needs(self) -> List[str]:
        """The stages whose weights this one reads when it starts (the teacher also while it trains)."""
        return [n for n in (self.teacher, self.init) if n]


def paper1_stages(student_init: bool = True) -> List[StageSpec]:
    """EDSR-T x2 from scratch, x3/x4 from its body; SqueezeSR-KD x2/x3/x4 from those teachers."""
    out = [StageSpec("edsr-t-x2", "edsr-t", 2, "teacher", 1)]
    out += [StageSpec(f"edsr-t-x{s}", "edsr-t", s, "teacher", 1, init="edsr-t-x2") for s in (3, 4)]
    out += [StageSpec(f"squeezesr-kd-x{s}", "squeezesr", s, "kd", 1, teacher=f"edsr-t-x{s}",
                      init="squeezesr-kd-x2" if s != 2 and student_init else None) for s in (2, 3, 4)]
    return out


def paper2_stages(scales: Sequence[int] = P2_SCALES, students: Sequence[int] = P2_STUDENTS) -> List[StageSpec]:
    """Per scale: the 4-RSTB teacher, then each student and its no-KD twin.

    Each teacher after the first starts from the one before (x3 from x2, x4 from x3: x2's body,
    trained further), so a resume pack never needs two teachers' weights at once.
    """
    out: List[StageSpec] = []
    for i, s in enumerate(scales):
        teacher = p2_teacher_name(s)
        init = p2_teacher_name(scales[i - 1]) if i else None
        out.append(StageSpec(teacher, "swinir", s, "teacher", 2, blocks=P2_TEACHER_BLOCKS, init=init))
        for k in students:
            kd = p2_student_name(k, s, True)
            out.append(StageSpec(kd, "swinir", s, "kd", 2, blocks=k, teacher=teacher, from_teacher=True))
            # The twin's start is the teacher's weights cut to k RSTBs: what from_teacher gives the student.
            out.append(StageSpec(p2_student_name(k, s, False), "swinir", s, "twin", 2, blocks=k, init=teacher,
                                 init_required=True, twin_of=kd))
    return out


def plan_stages(plan: str, scales: Sequence[int] = P2_SCALES, students: Sequence[int] = P2_STUDENTS,
                student_init: bool = True) -> List[StageSpec]:
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r}: use one of {', '.join(PLANS)}")
    out = paper1_stages(student_init) if plan in ("paper1", "all") else []
    return out + (paper2_stages(scales, students) if plan in ("paper2", "all") else [])


def default_shares(stages: Sequence[StageSpec]) -> Dict[str, float]:
    """Each share-bearing stage's default share (paper 1's sum to 1, and so do paper 2's full plan's)."""
    shares: Dict[str, float] = {}
    for st in stages:
        if st.paper == 1:
            shares[st.name] = DEFAULT_SHARES[st.name]
        elif st.role == "teacher":
            shares[st.name] = P2_TEACHER_SHARES.get(st.scale, 0.08)
        elif st.role == "kd":
            shares[st.name] = P2_PAIR_SHARES.get(st.scale, P2_PAIR_SHARES[3]).get(st.blocks or 0, 0.03)
    return shares


def swinir_rate(ref_rate: float, ref_blocks: int, blocks: int, fixed: float = 0.15) -> float:
    """Steps/s of a SwinIR with `blocks` RSTBs, from one measured with `ref_blocks`.

    A step costs a fixed part (head, tail, data, optimiser; `fixed` of the measured step) plus an
    equal part per RSTB. Used until a stage of that size has measured its own rate.
    """
    if not ref_rate > 0 or ref_blocks < 1:
        return 0.0
    t = 1.0 / ref_rate
    return 1.0 / (t * fixed + t * (1.0 - fixed) * blocks / ref_blocks)


def pair_split(seconds: float, kd_rate: float, twin_rate: float) -> Tuple[float, float]:
    """(KD stage, twin) seconds out of a pair's `seconds`: both train the same number of steps."""
    if not (kd_rate > 0 and twin_rate > 0):
        return seconds / 2.0, seconds / 2.0
    tk, tt = 1.0 / kd_rate, 1.0 / twin_rate
    return seconds * tk / (tk + tt), seconds * tt / (tk + tt)


def twin_seconds(steps: int, rate: float, slack: float, overhead: float = 0.0) -> float:
    """Time limit of a twin that stops by itself after `steps` steps: the estimate over `slack` (0.5: twice it)."""
    if not (rate > 0 and steps > 0):
        return 0.0
    return steps / rate / slack + overhead


def use_bf16(device_type: str, bf16_supported: bool) -> bool:
    """bf16 autocast only on a CUDA device with native bf16 (Ampere or newer); fp32 elsewhere.

    The trainer autocasts to bf16 on any CUDA device; on older GPUs bf16 is emulated and slower
    than fp32, so the script turns autocast off there.
    """
    return device_type == "cuda" and bool(bf16_supported)


def stage_seconds(left_s: float, shares: Mapping[str, float], stage: str, later: Sequence[str]) -> float:
    """This stage's part of `left_s`: its share over the shares of itself and the stages after it.

    Recomputed at every stage start, so time a stage did not use (or overran) moves to the rest.
    """
    total = shares[stage] + sum(shares[s] for s in later)
    if total <= 0 or left_s <= 0:
        return 0.0
    return left_s * shares[stage] / total


def training_seconds(budget_s: float, elapsed_s: float, reserve_per_stage_s: float, stages_left: int) -> float:
    """Seconds left for training once each remaining stage's evaluation and set-up are reserved."""
    return max(0.0, budget_s - elapsed_s - reserve_per_stage_s * stages_left)


def plan_steps(rate: float, seconds: float, safety: float = 0.9, minimum: int = 1) -> int:
    """Steps that fit in `seconds` at `rate` steps/s, with a safety factor so the cosine schedule ends."""
    if not (rate > 0 and seconds > 0 and math.isfinite(rate)):
        return minimum
    return max(minimum, int(rate * seconds * safety))


def kd_rate(student_rate: float, teacher_rate: float, fraction: float = TEACHER_FORWARD_FRACTION) -> float:
    """Steps/s of a distillation step: the student's training step plus the teacher's forward pass."""
    if student_rate <= 0 or teacher_rate <= 0:
        return 0.0
    return 1.0 / (1.0 / student_rate + fraction / teacher_rate)


def should_compile(
    eager_rate: Optional[float], compiled_rate: Optional[float], compile_s: Optional[float], stage_s: float, margin: float = 0.05
) -> Tuple[bool, str]:
    """torch.compile a stage only when it trains more steps in `stage_s` after paying `compile_s`.

    eager: eager_rate * stage_s steps; compiled: compiled_rate * (stage_s - compile_s) steps.
    Compile wins only by more than `margin` (compile time varies from run to run).
    Returns (decision, the arithmetic as one line for the log).
    """
    if not eager_rate or not compiled_rate or compile_s is None:
        return False, "eager: no compile measurement"
    eager_steps = eager_rate * stage_s
    compiled_steps = compiled_rate * max(0.0, stage_s - compile_s)
    yes = compiled_steps > eager_steps * (1.0 + margin)
    why = (
        f"{'compile' if yes else 'eager'}: compiled {compiled_rate:.1f} steps/s x ({stage_s:.0f} - {compile_s:.0f} s compile)"
        f" = {compiled_steps:.0f} steps vs eager {eager_rate:.1f} x {stage_s:.0f} s = {eager_steps:.0f}"
    )
    return yes, why


def checkpoint_every(rate: float, seconds: float = 60.0, minimum: int = 50) -> int:
    """Steps between training-state checkpoints: about every `seconds` at `rate`."""
    if not rate > 0:
        return minimum
    return max(minimum, int(rate * seconds))


def interval_rates(records: Iterable[Mapping]) -> List[Tuple[int, float]]:
    """(steps, seconds) of each logged training interval of a log.jsonl."""
    out, prev = [], 0
    for r in records:
        if r.get("event") != "train" or not r.get("steps_per_s"):
            continue
        n = int(r["step"]) - prev
        prev = int(r["step"])
        if n > 0:
            out.append((n, n / float(r["steps_per_s"])))
    return out


def steady_rate(records: Iterable[Mapping], skip: int = 1) -> Tuple[Optional[float], Optional[float]]:
    """(steps/s after the first `skip` intervals, seconds of the first interval) from log records.

    The first interval holds cuDNN's algorithm search and, compiled, the compilation, so it is
    left out of the rate; with nothing after it, the rate is the first interval's.
    """
    iv = interval_rates(records)
    if not iv:
        return None, None
    rest = iv[skip:] or iv
    steps, secs = sum(n for n, _ in rest), sum(t for _, t in rest)
    return (steps / secs if secs > 0 else None), iv[0][1]


def compile_seconds(first_interval_s: float, first_interval_steps: int, compiled_rate: float) -> float:
    """Compile time: the first interval's duration less what its steps cost once compiled."""
    return max(0.0, first_interval_s - first_interval_steps / compiled_rate)


def _probed(p: Mapping, compiled: bool) -> Optional[float]:
    """A probe record's eager or compiled steps/s."""
    return (p.get("compiled") or {}).get("steps_per_s") if compiled else p.get("steps_per_s")


def _swinir_estimates(probe: Mapping, spec: StageSpec) -> Dict[str, Optional[float]]:
    p = probe.get("swinir", {})
    ref_blocks = int(p.get("blocks", P2_TEACHER_BLOCKS))
    teacher = _probed(p, False)  # the teacher runs eager, on the student's batch (the same SwinIR batch)
    est: Dict[str, Optional[float]] = {}
    for compiled in (False, True):
        r = _probed(p, compiled)
        s = swinir_rate(r, ref_blocks, spec.blocks or P2_TEACHER_BLOCKS) if r else None
        if s and spec.kd:
            s = kd_rate(s, teacher) if teacher else None
        est["compiled" if compiled else "eager"] = s
    est["compile_s"] = (p.get("compiled") or {}).get("compile_s")
    return est


def _convnet_estimates(probe: Mapping, spec: StageSpec) -> Dict[str, Optional[float]]:
    p_edsr, p_sq = probe.get("edsr-t", {}), probe.get("squeezesr", {})
    est: Dict[str, Optional[float]] = {}
    for compiled in (False, True):
        if spec.kd:
            teacher = _probed(p_edsr, False)  # the teacher runs eager: only the student is compiled
            if teacher and p_edsr.get("batch") and p_sq.get("batch"):
                # the teacher's forward runs on the student's batch: cost scales with the LR pixels
                teacher *= p_edsr["batch"] * p_edsr["patch"] ** 2 / (p_sq["batch"] * p_sq["patch"] ** 2)
            s = _probed(p_sq, compiled)
            est["compiled" if compiled else "eager"] = kd_rate(s, teacher) if s and teacher else None
        else:
            est["compiled" if compiled else "eager"] = _probed(p_edsr, compiled)
    est["compile_s"] = ((p_sq if spec.kd else p_edsr).get("compiled") or {}).get("compile_s")
    return est


def stage_rates(summary: Mapping, spec: StageSpec, device_name: str) -> Dict[str, Optional[float]]:
    """A stage's eager and compiled steps/s estimates (and compile_s) from a gpu_run summary: the last finished
    stage of the same kind on this device, else the probe's numbers."""
    probe = summary.get("probe", {}).get("archs", {})
    est = _swinir_estimates(probe, spec) if spec.arch == "swinir" else _convnet_estimates(probe, spec)
    measured = [st for st in summary["stages"]  # later measurements beat the probe, this scale's the others
                if st.get("kd") == spec.kd and st.get("arch") == spec.arch and st.get("blocks") == spec.blocks
                and st.get("status") in ("done", "stopped") and st.get("steps_per_s")
                and st.get("device", device_name) == device_name]
    for st in sorted(measured, key=lambda st: st.get("scale") == spec.scale):
        est["compiled" if st.get("compile") else "eager"] = st["steps_per_s"]
    return est


def _fmt(v: Optional[float], digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report(summary: Mapping) -> str:
    """Markdown tables from a summary.json: the probe's steps per second/minute, and every stage."""
    env = summary.get("env", {})
    lines = [
        f"Probe on {env.get('gpu') or env.get('device', '?')} (torch {env.get('torch', '?')}, CUDA {env.get('cuda') or '-'}, "
        f"{summary.get('precision', '?')}), from `summary.json`:",
        "",
        "| arch, scale | batch x patch | steps/s | steps/min | samples/s | compiled steps/s | compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch, p in summary.get("probe", {}).get("archs", {}).items():
        c = p.get("compiled") or {}
        rate = p.get("steps_per_s")
        lines.append(
            f"| {arch} x{p.get('scale', 2)} | {p.get('batch')} x {p.get('patch')} | {_fmt(rate)} | "
            f"{_fmt(rate * 60 if rate else None, 0)} | {_fmt(rate * p['batch'] if rate else None, 0)} | "
            f"{_fmt(c.get('steps_per_s'))} | {_fmt(c.get('compile_s'), 0)} |"
        )
    sets = eval_sets(summary)
    lines += ["", "| stage | status | steps | seconds | steps/s | compiled | " + " | ".join(f"{n} PSNR-Y" for n in sets) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(sets)]
    for st in summary.get("stages", []):
        ev = st.get("eval", {})
        cells = [_fmt(ev.get(k, {}).get("psnr_y"), 2) for k in sets]
        lines.append(
            f"| {st['name']} | {st.get('status')} | {st.get('steps', 0)}/{st.get('steps_planned', '?')} | "
            f"{_fmt(st.get('seconds'), 0)} | {_fmt(st.get('steps_per_s'))} | {'yes' if st.get('compile') else 'no'} | "
            + " | ".join(cells) + " |"
        )
    rows = p2_comparison(summary)
    if rows:
        lines += ["", "Paper 2 (PSNR-Y, dB): each student against its no-KD twin (same start, same steps) and its teacher.", "",
                  "| scale | RSTBs | set | teacher | KD student | twin | KD − twin | KD − teacher |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| x{r['scale']} | {r['blocks']} | {r['set']} | {_fmt(r['teacher'], 2)} | {_fmt(r['kd'], 2)} | "
                         f"{_fmt(r['twin'], 2)} | {_fmt(r['kd_minus_twin'], 3)} | {_fmt(r['kd_minus_teacher'], 3)} |")
    return "\n".join(lines) + "\n"


def eval_sets(summary: Mapping) -> List[str]:
    """The evaluation sets a summary holds: Set5 and Set14 always, then Urban100 and any others."""
    found: List[str] = []
    for st in summary.get("stages", []):
        found += [k for k in st.get("eval", {}) if k not in found]
    first = ["Set5", "Set14"] + (["Urban100"] if "Urban100" in found else [])
    return first + sorted(k for k in found if k not in first)


def p2_comparison(summary: Mapping) -> List[Dict]:
    """Paper 2's comparisons, one row per (scale, student RSTBs, set) where the KD student was scored."""
    stages = {st["name"]: st for st in summary.get("stages", [])}

    def score(name: str, set_name: str) -> Optional[float]:
        return stages.get(name, {}).get("eval", {}).get(set_name, {}).get("psnr_y")

    def diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return None if a is None or b is None else round(a - b, 4)

    rows = []
    for st in summary.get("stages", []):
        if st.get("paper") != 2 or st.get("role") != "kd":
            continue
        s, k = st["scale"], st["blocks"]
        for set_name in (n for n in eval_sets(summary) if n in st.get("eval", {})):
            kd, twin = score(st["name"], set_name), score(p2_student_name(k, s, False), set_name)
            teacher = score(p2_teacher_name(s), set_name)
            rows.append({"scale": s, "blocks": k, "set": set_name, "teacher": teacher, "kd": kd, "twin": twin,
                         "kd_minus_twin": diff(kd, twin), "kd_minus_teacher": diff(kd, teacher)})
    return rows
