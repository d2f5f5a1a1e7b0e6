"""The command line of `research/gpu/gpu_run.py`: its options, their defaults (--smoke's too), the
checks that turn a bad value into one line, and the settings a --resume takes from its summary.

`parse_args` returns the options completed: defaults filled in, `stages` (the plan), `share_map`,
and `resume_summary` / `resume_pack` (what a --resume continues).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gpu_plan as gp
import gpu_state as gs
from srkd_cli.errors import SrkdError

ROOT = Path(__file__).resolve().parents[2]
FORMAT = "srkd-gpu-run/1"
DEVICE_CALL_MINUTES = 9.2  # --call-minutes' default where $OUT is set: inside the device tool's 10-minute command
# --smoke: the same code paths in seconds on a CPU. Tiny models (SwinIR's RSTB count is the plan's); its
# stage_overhead is shared by the plan's stages, at most SMOKE_STAGE_OVERHEAD_MAX each (21 stages of paper 2
# would not fit 2 s each).
SMOKE_ARCH = {
    "edsr-t": dict(n_feats=8, modules_per_block=1),
    "squeezesr": dict(n_feats=8, squeeze=4, expand1x1=4),
    "swinir": dict(embed_dim=12, depth=2, num_heads=2, window_size=4),
}
SMOKE = dict(minutes=0.5, probe_minutes=0.06, eval_minutes=0.05, stage_overhead=12.0, batch=4, patch=16, log_every=5)
SMOKE_STAGE_OVERHEAD_MAX = 2.0
# Settings a resumed run takes from its summary.json (an explicit, different value is an error).
RESTORED = ("plan", "scales", "students", "batch", "patch", "swinir_batch", "swinir_patch", "teacher_lr", "student_lr",
            "swinir_lr", "swinir_student_lr", "feat_loss", "feat_weight", "alpha", "p2_teacher", "p2_teacher_weight",
            "p2_teacher_cache", "kd_teacher_cache", "safety", "seed", "student_init", "smoke", "probe_minutes",
            "eval_minutes", "stage_overhead")
DEFAULTS = dict(plan="paper1", minutes=12.0, probe_minutes=0.5, eval_minutes=0.5, stage_overhead=5.0, batch=32, patch=48,
                swinir_batch=16, swinir_patch=64, device="auto", scales=gp.P2_SCALES, students=gp.P2_STUDENTS,
                feat_loss="l1", feat_weight=0.1, alpha=0.75, p2_teacher_weight=0.5, p2_teacher_cache="ram",
                kd_teacher_cache="off", safety=0.92, seed=0, student_init=True, smoke=False)


class Fail(Exception):
    """A problem with the options or inputs: one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        raise Fail(message)


# ---------------------------------------------------------------------------------------------- options
# Most options default to None, so a --resume can tell a value given from one left out (RESTORED).
# The groups keep --help's order.

Add = Callable[..., Any]


def _add_run_options(a: Add) -> None:
    a("--plan", choices=gp.PLANS, default=None, help="paper1 (EDSR-T, SqueezeSR-KD), paper2 (SwinIR teacher, students, twins) or all (default paper1)")
    a("--minutes", type=float, default=None, help="total time budget, over all invocations of the run (default 12; --smoke: 0.5)")
    a("--out", type=Path, default=None, help="output folder (default: $OUT if set, else out/gpu-run)")
    a("--work", type=Path, default=Path("runs/gpu-run"), help="run folders with state.pt and log.jsonl (default runs/gpu-run)")
    a("--data", type=Path, action="append", help="HR training images (default data/train, else ../shared/data/train)")
    a("--val", type=Path, action="append", help="evaluation sets (default tests/data/Set5, and Set14 and Urban100 of data/benchmark or ../shared/data/benchmark where present)")
    a("--resume", nargs="?", const=True, default=None, metavar="DIR",
      help="continue the run in --work; with DIR (a copy of an earlier --out, or its resume.zip) continue it on a fresh machine")


def _add_time_options(a: Add) -> None:
    a("--call-minutes", type=float, default=None, help="stop this invocation cleanly after this long (a device call's limit; default --minutes, at most 9.2 where $OUT is set); continue with --resume")
    a("--probe-minutes", type=float, default=None, help="eager probe, split across the architectures (default 0.5)")
    a("--eval-minutes", type=float, default=None, help="time reserved for evaluating the models (default 0.5)")
    a("--stage-overhead", type=float, default=None, help="seconds reserved per stage for set-up and export (default 5)")
    a("--shares", default=None, help="training shares by stage, e.g. edsr-t-x2=0.5,swinir-s3-kd-x2=0.1 (a KD student's share pays for its twin too; the rest keep their defaults; may change on --resume)")
    a("--compile", choices=("auto", "on", "off"), default="auto", help="torch.compile: auto decides from the probe (CUDA only)")


def _add_training_options(a: Add) -> None:
    a("--batch", type=int, default=None, help="batch of EDSR-T and of the students (default 32; --smoke 4)")
    a("--patch", type=int, default=None, help="LR patch of EDSR-T and the students (default 48; --smoke 16)")
    a("--swinir-batch", type=int, default=None, help="SwinIR batch, probe and paper 2 (default 16; --smoke 4)")
    a("--swinir-patch", type=int, default=None, help="SwinIR LR patch, probe and paper 2 (default 64, SwinIR-light's; --smoke 16)")
    a("--teacher-lr", type=float, default=None, help="EDSR-T peak learning rate (default 2e-4)")
    a("--student-lr", type=float, default=None, help="SqueezeSR peak learning rate (default 1e-3)")
    a("--swinir-lr", type=float, default=None, help="paper 2's teachers' peak learning rate (default 2e-4)")
    a("--swinir-student-lr", type=float, default=None, help="paper 2's students' and twins' peak learning rate (default 2e-4)")
    a("--feat-loss", choices=("l1", "mse"), default=None, help="paper 1 feature distance (default l1)")
    a("--feat-weight", type=float, default=None, help="paper 1 feature weight beta (default 0.1)")


def _add_paper2_options(a: Add) -> None:
    a("--alpha", type=float, default=None, help="paper 2's alpha: alpha L1(S,HR) + (1-alpha)(L1(S,T) + MSE(F1_S,F1_T)) (default 0.75)")
    a("--scales", default=None, help="paper 2's scales, e.g. 2,4 (default 2,3,4; each teacher starts from the one before)")
    a("--students", default=None, help="paper 2's student RSTB counts, e.g. 3,1 (default 3,2,1; none: the teachers alone)")
    a("--p2-teacher", default=None, metavar="MODEL",
      help="paper 2's teachers also learn this model's output: zoo name or file, {s} for the scale (e.g. bsrn-x{s}) (default: none, L1 alone)")
    a("--p2-teacher-weight", type=float, default=None, help="weight of L1(output, --p2-teacher's output) (default 0.5)")
    a("--p2-teacher-cache", default=None, help="--p2-teacher's outputs: ram (computed once per image and augmentation; default), off or a folder")
    a("--kd-teacher-cache", default=None, help="the SwinIR teacher's targets for its students: off (run live; default), ram or a folder")


def _add_machine_options(a: Add) -> None:
    a("--no-student-init", action="store_true", default=None, help="KD x3/x4 students of paper 1 start fresh instead of from the KD x2 student")
    a("--safety", type=float, default=None, help="planned steps = rate x seconds x this (default 0.92)")
    a("--seed", type=int, default=None, help="(default 0)")
    a("--device", default=None, help="auto, cuda, cuda:N or cpu (default auto; --smoke cpu)")
    a("--threads", type=int, default=None, help="CPU threads for torch (--smoke: 1)")
    a("--smoke", action="store_true", default=None, help="tiny models on Set5 on the CPU: the whole pipeline in well under a minute")


def _add_commands(a: Add) -> None:
    a("--report", type=Path, default=None, metavar="SUMMARY", help="print a summary.json's probe and results as markdown, then exit")
    a("--pack-mb", type=float, default=6.0,
      help="resume.zip's size limit in MB: what the next session can carry beside code and data (--carry-check says; default 6)")
    a("--carry-check", type=Path, default=None, metavar="DIR",
      help="print what a session resuming from DIR carries (code, data/train, DIR's resume.zip and summary.json) against 64 MiB, then exit")
    a("--evaluate", type=Path, default=None, metavar="DIR",
      help="score every finished model of the run in DIR (summary.json, models-*.zip) on the --val sets it lacks, then exit")


def build_parser(description: Optional[str] = None) -> Parser:
    ap = Parser(prog="gpu_run.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add in (_add_run_options, _add_time_options, _add_training_options, _add_paper2_options, _add_machine_options,
                _add_commands):
        add(ap.add_argument)
    return ap


# ---------------------------------------------------------------------------------------------- checks


def parse_args(argv: Optional[List[str]], description: Optional[str] = None) -> argparse.Namespace:
    args = build_parser(description).parse_args(argv)
    if args.report is not None or args.carry_check is not None:
        return args  # reading a summary or sizes needs none of the run's inputs
    if not args.pack_mb > 0:
        raise Fail(f"--pack-mb {args.pack_mb}: must be positive")
    if args.evaluate is not None:
        return _evaluate_args(args)
    _parse_lists(args)
    _restore_settings(args)
    _apply_defaults(args)
    _check_times(args)
    _check_training(args)
    _plan(args)
    _check_paths(args)
    return args


def _name(attr: str) -> str:
    return "--" + attr.replace("_", "-")


def _evaluate_args(args: argparse.Namespace) -> argparse.Namespace:
    """--evaluate needs only the sets to score on and a device."""
    args.val = args.val or default_val(urban100=True)
    args.device = args.device or "auto"
    for v in args.val:
        if not v.is_dir():
            raise Fail(f"--val {v}: no such folder")
    return args


def _parse_lists(args: argparse.Namespace) -> None:
    args.student_init = None if args.no_student_init is None else False
    if args.scales is not None:
        args.scales = parse_ints("--scales", args.scales, (2, 3, 4))
    if args.students is not None:
        args.students = parse_ints("--students", args.students, tuple(range(1, gp.P2_TEACHER_BLOCKS)))


def _restore_settings(args: argparse.Namespace) -> None:
    """A --resume keeps the settings its run started with; a different explicit value is an error."""
    args.resume_summary, args.resume_pack = resume_source(args) if args.resume is not None else (None, None)
    if args.resume_summary is None:
        return
    settings = args.resume_summary.get("settings", {})
    for key in RESTORED:
        if key not in settings:
            continue
        recorded = tuple(settings[key]) if isinstance(settings[key], list) else settings[key]
        given = getattr(args, key)
        if given is not None and given != recorded:
            raise Fail(f"{_name(key)} {given}: this run was started with {recorded} (a resumed run keeps its settings)")
        setattr(args, key, recorded)


def _apply_defaults(args: argparse.Namespace) -> None:
    """Fill in what is neither given nor restored: DEFAULTS, with --smoke's tiny sizes and short budgets."""
    args.minutes_given = args.minutes is not None
    defaults = dict(DEFAULTS)
    if args.smoke:
        n_stages = len(gp.plan_stages(args.plan or "paper1", args.scales or gp.P2_SCALES,
                                      gp.P2_STUDENTS if args.students is None else args.students))
        defaults.update(minutes=SMOKE["minutes"], probe_minutes=SMOKE["probe_minutes"], eval_minutes=SMOKE["eval_minutes"],
                        stage_overhead=min(SMOKE_STAGE_OVERHEAD_MAX, SMOKE["stage_overhead"] / max(1, n_stages)),
                        batch=SMOKE["batch"], patch=SMOKE["patch"], swinir_batch=SMOKE["batch"],
                        swinir_patch=SMOKE["patch"], device="cpu")
        args.threads = args.threads or 1
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.resume_summary is not None and not args.minutes_given:
        args.minutes = float(args.resume_summary.get("budget_s", args.minutes * 60.0)) / 60.0
    if args.call_minutes is None:
        # Under the device tool ($OUT set) a command runs at most 10 minutes: stop cleanly before it is killed.
        args.call_minutes = min(args.minutes, DEVICE_CALL_MINUTES) if os.environ.get("OUT") else args.minutes


def _check_times(args: argparse.Namespace) -> None:
    for name in ("minutes", "call_minutes"):
        if not getattr(args, name) > 0:
            raise Fail(f"{_name(name)} {getattr(args, name)}: must be positive")
    for name in ("probe_minutes", "eval_minutes", "stage_overhead"):
        if getattr(args, name) < 0:
            raise Fail(f"{_name(name)} {getattr(args, name)}: must be >= 0")
    if args.probe_minutes + args.eval_minutes >= args.minutes:
        raise Fail(f"--probe-minutes {args.probe_minutes} + --eval-minutes {args.eval_minutes} leave no time of --minutes {args.minutes}")


def _check_training(args: argparse.Namespace) -> None:
    for name in ("batch", "patch", "swinir_batch", "swinir_patch"):
        if getattr(args, name) < 1:
            raise Fail(f"{_name(name)} {getattr(args, name)}: must be at least 1")
    if not 0 < args.safety <= 1:
        raise Fail(f"--safety {args.safety}: must lie in (0, 1]")
    if not 0 <= args.alpha <= 1:
        raise Fail(f"--alpha {args.alpha}: must lie in [0, 1]")
    if not args.p2_teacher_weight > 0:
        raise Fail(f"--p2-teacher-weight {args.p2_teacher_weight}: must be positive")
    for name in ("swinir_lr", "swinir_student_lr", "teacher_lr", "student_lr"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise Fail(f"{_name(name)} {getattr(args, name)}: must be positive")
    if args.p2_teacher is not None:
        try:
            args.p2_teacher.format(s=2)
        except (KeyError, IndexError, ValueError):
            raise Fail(f"--p2-teacher {args.p2_teacher}: only {{s}} (the scale) may stand in braces") from None


def _plan(args: argparse.Namespace) -> None:
    args.stages = gp.plan_stages(args.plan, args.scales, args.students, args.student_init)
    if not args.stages:
        raise Fail(f"--plan {args.plan} --scales {','.join(map(str, args.scales))}: no stage to run")
    recorded_shares = (args.resume_summary or {}).get("settings", {}).get("shares")
    args.share_map = parse_shares(args.shares, args.stages, recorded_shares)


def _check_paths(args: argparse.Namespace) -> None:
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("out/gpu-run")
    smoke = bool(args.smoke)
    args.data = args.data or [default_data(smoke)]
    args.val = args.val or ([ROOT / "tests" / "data" / "Set5"] if smoke else default_val())
    for d in args.data:
        if not d.is_dir():
            raise Fail(f"--data {d}: no such folder (copy ../shared/data/train to data/train; docs/training.md, 'A GPU session')")
    for v in args.val:
        if not v.is_dir():
            raise Fail(f"--val {v}: no such folder")
    if args.out.resolve() == args.work.resolve():
        raise Fail("--out and --work must differ (--out receives only the files the device tool returns)")


def parse_ints(option: str, text: str, allowed: Tuple[int, ...]) -> Tuple[int, ...]:
    """'3,2,1' -> (3, 2, 1), each one of `allowed`; 'none' -> ()."""
    if text.strip().lower() in ("none", ""):
        return ()
    out = []
    for item in text.split(","):
        try:
            v = int(item)
        except ValueError:
            raise Fail(f"{option} {text}: {item.strip()!r} is not a whole number") from None
        if v not in allowed:
            raise Fail(f"{option} {text}: {v} is not one of {', '.join(map(str, allowed))}")
        if v not in out:
            out.append(v)
    return tuple(out)


def parse_shares(text: Optional[str], stages: Sequence[gp.StageSpec], recorded: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    shares = gp.default_shares(stages)
    shares.update({k: v for k, v in (recorded or {}).items() if k in shares})
    twins = {s.name for s in stages if s.role == "twin"}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        key = key.strip()
        if key in twins:
            raise Fail(f"--shares {item}: a twin trains its KD student's steps; set the share of {key.replace('-x', '-kd-x')}")
        if not sep or key not in shares:
            raise Fail(f"--shares {item}: expected STAGE=FRACTION with STAGE one of {', '.join(shares)}")
        try:
            shares[key] = float(val)
        except ValueError:
            raise Fail(f"--shares {item}: {val!r} is not a number") from None
        if shares[key] < 0:
            raise Fail(f"--shares {item}: must be >= 0")
    if sum(shares.values()) <= 0:
        raise Fail("--shares: at least one stage needs a positive share")
    return shares


# ---------------------------------------------------------------------------------------------- inputs


def read_summary(path: Path, option: str = "--resume") -> Dict[str, Any]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Fail(f"{option}: {path} is not readable JSON ({e})") from None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        raise Fail(f"{option}: {path} is not a gpu_run summary")
    return summary


def _pack_summary(src: Path) -> Tuple[Dict[str, Any], Path]:
    """The summary and resume pack in --resume's DIR or file; a DIR's own summary.json where it is the same point
    of the run (it may hold what --evaluate added)."""
    try:
        if src.is_dir():
            pack = src / gs.RESUME_PACK
            if not pack.is_file():
                raise Fail(f"--resume {src}: holds no {gs.RESUME_PACK} (copy there the files an earlier run returned)")
            summary = gs.read_pack_summary(pack)
            local = src / "summary.json"
            if local.is_file():
                here = read_summary(local)
                if (here.get("started"), here.get("invocations")) == (summary.get("started"), summary.get("invocations")):
                    summary = here
            return summary, pack
        if src.is_file():
            return gs.read_pack_summary(src), src
        raise Fail(f"--resume {src}: no such folder or file")
    except SrkdError as e:
        raise Fail(f"--resume {e}") from None


def resume_source(args: argparse.Namespace) -> Tuple[Optional[Dict[str, Any]], Optional[Path]]:
    """The summary a --resume continues, and the resume pack to lay out in --work (None: --work is current)."""
    prev = args.work / "summary.json"
    current = read_summary(prev) if prev.is_file() else None
    if args.resume is True:
        return current, None
    src = Path(args.resume)
    summary, pack = _pack_summary(src)
    if summary.get("format") != FORMAT:
        raise Fail(f"--resume {src}: its summary.json is not a gpu_run summary")
    if current is not None:
        if current.get("started") != summary.get("started"):
            raise Fail(f"--work {args.work}: holds another run; give --resume {src} an empty --work")
        if current.get("invocations", 0) >= summary.get("invocations", 0):
            return current, None  # a second call on the same machine: --work is at least as far on
    return summary, pack


def default_data(smoke: bool) -> Path:
    if smoke:
        return ROOT / "tests" / "data" / "Set5" / "HR"
    carried = ROOT / "data" / "train"  # git-ignored: what the device tool's `carry` brings
    return carried if carried.is_dir() else ROOT.parent / "shared" / "data" / "train"


def default_val(urban100: bool = True) -> List[Path]:
    """Set5 (in the repository), then Set14 and Urban100 where carried (data/benchmark) or beside it."""
    sets = [ROOT / "tests" / "data" / "Set5"]
    for name in ("Set14", "Urban100") if urban100 else ("Set14",):
        for base in (ROOT / "data" / "benchmark", ROOT.parent / "shared" / "data" / "benchmark"):
            if (base / name).is_dir():
                sets.append(base / name)
                break
    return sets
