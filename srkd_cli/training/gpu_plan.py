"""The arithmetic behind `scripts/gpu_run.py`: budget split, step plans, the compile guard, rates.

Pure functions only (no CUDA, no files), so every decision the GPU run takes can be tested on a
CPU: which precision, how many seconds and steps each stage gets, whether torch.compile pays.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

# The stages in the order they run, with their default share of the training time.
# EDSR-T x2 trains from scratch and gets most; x3/x4 start from its body and only re-learn the
# tail; the students are small, but each KD step also runs the teacher's forward pass.
STAGES: Tuple[str, ...] = ("edsr-t-x2", "edsr-t-x3", "edsr-t-x4", "squeezesr-kd-x2", "squeezesr-kd-x3", "squeezesr-kd-x4")
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


def stage_arch(stage: str) -> Tuple[str, int, bool]:
    """'squeezesr-kd-x3' -> ('squeezesr', 3, True); 'edsr-t-x2' -> ('edsr-t', 2, False)."""
    head, _, s = stage.rpartition("-x")
    kd = head.endswith("-kd")
    return (head[: -len("-kd")] if kd else head), int(s), kd


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
    lines += ["", "| stage | status | steps | seconds | steps/s | compiled | Set5 PSNR-Y | Set14 PSNR-Y |", "|---|---|---|---|---|---|---|---|"]
    for st in summary.get("stages", []):
        ev = st.get("eval", {})
        cells = [_fmt(ev.get(k, {}).get("psnr_y"), 2) for k in ("Set5", "Set14")]
        lines.append(
            f"| {st['name']} | {st.get('status')} | {st.get('steps', 0)}/{st.get('steps_planned', '?')} | "
            f"{_fmt(st.get('seconds'), 0)} | {_fmt(st.get('steps_per_s'))} | {'yes' if st.get('compile') else 'no'} | "
            f"{cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines) + "\n"
