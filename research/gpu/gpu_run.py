#!/usr/bin/env python
"""One GPU session, one command: probe, train the teachers, distil the students, evaluate.

    python research/gpu/gpu_run.py --minutes 12 --out $OUT          # paper 1's plan in 12 minutes
    python research/gpu/gpu_run.py --smoke --out /tmp/smoke          # the same, tiny, on the CPU
    python research/gpu/gpu_run.py --report $OUT/summary.json        # the probe and results as markdown
    python research/gpu/gpu_run.py --plan paper2 --minutes 36 --call-minutes 9.2 --out $OUT   # session 1 of 4
    python research/gpu/gpu_run.py --resume runs/p2 --call-minutes 9.2 --out $OUT             # sessions 2..4
    python research/gpu/gpu_run.py --carry-check runs/p2          # before a session: what it carries, 64 MiB
    python research/gpu/gpu_run.py --evaluate runs/p2 --val ../shared/data/benchmark/Urban100  # here, on the CPU

Plans (--plan): paper1 (EDSR-T and SqueezeSR-KD, below), paper2 (SwinIR-light: srkd's own 4-RSTB
teacher swinir4-srkd-x{s} trained with L1, then students swinir-s{k}-kd-x{s} with k = 3, 2, 1 RSTBs
distilled with paper 2's loss from the teacher's head, first k RSTBs and tail, each followed by
its no-KD twin swinir-s{k}-x{s}: same start, same steps, L1 only; x3 starts from x2's teacher,
x4 from x3's), or all (paper 1, then paper 2). A run spans GPU sessions: every invocation leaves
in --out `resume.zip`, what the next one needs (--resume DIR), and `models-N.zip`, the weights it
finished.

Steps (docs/training.md, "A GPU session"):
  1. print the GPU, torch, CUDA and cuDNN versions;
  2. probe: steps/s of the plan's architectures x2 at the planned batch/patch (eager), and, with
     --compile auto on CUDA, compiled, with their compile times;
  3. paper 1: EDSR-T x2 from scratch, then x3 and x4 from its weights (--init); SqueezeSR-KD x2,
     x3, x4 distilled from those teachers (paper 1's feature recipe);
     paper 2: per scale the SwinIR teacher, then each student and its twin;
     torch.compile per stage only where the probe's numbers say it pays (the arithmetic is logged);
  4. after every stage: weights, scores on the --val sets, summary.json and resume.zip in --out.

Every stage's time is its share of what is left when it starts, so time one stage leaves unused
goes to the rest; steps are planned from the measured rate so the cosine schedule ends in time,
and the stage's time limit is the backstop. Run folders (state.pt, log.jsonl) live in --work;
--out gets at most 8 files (summary.json, gpu_run.log, resume.zip, models-N.zip), what the device
tool returns. SIGTERM/SIGINT checkpoint and stop; --resume (same --work) or --resume DIR (a copy
of an earlier --out, on a fresh machine) continues where it stopped.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here, imports included
_RUNS = [0]  # invocations in this process: a second (tests, in-process) counts from its own start

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List, Optional, Sequence, Tuple  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_plan, gpu_state beside it

from srkd_cli.errors import SrkdError  # noqa: E402
from srkd_cli.runtime.signals import StopFlag  # noqa: E402
import gpu_plan as gp  # noqa: E402
import gpu_state as gs  # noqa: E402

FORMAT = "srkd-gpu-run/1"
# What the probe measures, with its part of --probe-minutes: paper 1 probes all three (SwinIR for
# the record), paper 2 only the SwinIR teacher it trains.
PROBES = {"paper1": {"edsr-t": 0.4, "squeezesr": 0.3, "swinir": 0.3}, "paper2": {"swinir": 1.0},
          "all": {"edsr-t": 0.3, "squeezesr": 0.2, "swinir": 0.5}}
FINAL = ("done", "stopped", "failed", "skipped")  # a stage in one of these never runs again
OUT_FILES, OUT_BYTES = 8, 64 * 2**20  # what the device tool returns at most
DEVICE_CALL_MINUTES = 9.2  # --call-minutes' default where $OUT is set: inside the device tool's 10-minute command
# A twin stops at its student's step count: its time limit is a backstop, twice the estimate.
TWIN_SLACK = 0.5
OUT_HEADROOM = 4 * 2**20  # left for summary.json, gpu_run.log and resume.zip to grow
# Tiny models for --smoke: the same code paths in seconds on a CPU. SwinIR's RSTB count is the plan's.
SMOKE_ARCH = {
    "edsr-t": dict(n_feats=8, modules_per_block=1),
    "squeezesr": dict(n_feats=8, squeeze=4, expand1x1=4),
    "swinir": dict(embed_dim=12, depth=2, num_heads=2, window_size=4),
}
SMOKE = dict(minutes=0.5, probe_minutes=0.06, eval_minutes=0.05, stage_overhead=12.0, batch=4, patch=16, log_every=5)
# (--smoke's stage_overhead is shared by the plan's stages, at most 2 s each: 21 stages of paper 2 would not fit 2 s each.)
# Settings a resumed run takes from its summary.json (an explicit, different value is an error).
RESTORED = ("plan", "scales", "students", "batch", "patch", "swinir_batch", "swinir_patch", "teacher_lr", "student_lr",
            "swinir_lr", "swinir_student_lr", "feat_loss", "feat_weight", "alpha", "p2_teacher", "p2_teacher_weight",
            "p2_teacher_cache", "kd_teacher_cache", "safety", "seed", "student_init", "smoke", "probe_minutes",
            "eval_minutes", "stage_overhead")


class Fail(Exception):
    """A problem with the options or inputs: one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        raise Fail(message)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = Parser(prog="gpu_run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--plan", choices=gp.PLANS, default=None, help="paper1 (EDSR-T, SqueezeSR-KD), paper2 (SwinIR teacher, students, twins) or all (default paper1)")
    a("--minutes", type=float, default=None, help="total time budget, over all invocations of the run (default 12; --smoke: 0.5)")
    a("--out", type=Path, default=None, help="output folder (default: $OUT if set, else out/gpu-run)")
    a("--work", type=Path, default=Path("runs/gpu-run"), help="run folders with state.pt and log.jsonl (default runs/gpu-run)")
    a("--data", type=Path, action="append", help="HR training images (default data/train, else ../shared/data/train)")
    a("--val", type=Path, action="append", help="evaluation sets (default tests/data/Set5, and Set14 and Urban100 of data/benchmark or ../shared/data/benchmark where present)")
    a("--resume", nargs="?", const=True, default=None, metavar="DIR",
      help="continue the run in --work; with DIR (a copy of an earlier --out, or its resume.zip) continue it on a fresh machine")
    a("--call-minutes", type=float, default=None, help="stop this invocation cleanly after this long (a device call's limit; default --minutes, at most 9.2 where $OUT is set); continue with --resume")
    a("--probe-minutes", type=float, default=None, help="eager probe, split across the architectures (default 0.5)")
    a("--eval-minutes", type=float, default=None, help="time reserved for evaluating the models (default 0.5)")
    a("--stage-overhead", type=float, default=None, help="seconds reserved per stage for set-up and export (default 5)")
    a("--shares", default=None, help="training shares by stage, e.g. edsr-t-x2=0.5,swinir-s3-kd-x2=0.1 (a KD student's share pays for its twin too; the rest keep their defaults; may change on --resume)")
    a("--compile", choices=("auto", "on", "off"), default="auto", help="torch.compile: auto decides from the probe (CUDA only)")
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
    a("--alpha", type=float, default=None, help="paper 2's alpha: alpha L1(S,HR) + (1-alpha)(L1(S,T) + MSE(F1_S,F1_T)) (default 0.75)")
    a("--scales", default=None, help="paper 2's scales, e.g. 2,4 (default 2,3,4; each teacher starts from the one before)")
    a("--students", default=None, help="paper 2's student RSTB counts, e.g. 3,1 (default 3,2,1; none: the teachers alone)")
    a("--p2-teacher", default=None, metavar="MODEL",
      help="paper 2's teachers also learn this model's output: zoo name or file, {s} for the scale (e.g. bsrn-x{s}) (default: none, L1 alone)")
    a("--p2-teacher-weight", type=float, default=None, help="weight of L1(output, --p2-teacher's output) (default 0.5)")
    a("--p2-teacher-cache", default=None, help="--p2-teacher's outputs: ram (computed once per image and augmentation; default), off or a folder")
    a("--kd-teacher-cache", default=None, help="the SwinIR teacher's targets for its students: off (run live; default), ram or a folder")
    a("--no-student-init", action="store_true", default=None, help="KD x3/x4 students of paper 1 start fresh instead of from the KD x2 student")
    a("--safety", type=float, default=None, help="planned steps = rate x seconds x this (default 0.92)")
    a("--seed", type=int, default=None, help="(default 0)")
    a("--device", default=None, help="auto, cuda, cuda:N or cpu (default auto; --smoke cpu)")
    a("--threads", type=int, default=None, help="CPU threads for torch (--smoke: 1)")
    a("--smoke", action="store_true", default=None, help="tiny models on Set5 on the CPU: the whole pipeline in well under a minute")
    a("--report", type=Path, default=None, metavar="SUMMARY", help="print a summary.json's probe and results as markdown, then exit")
    a("--pack-mb", type=float, default=6.0,
      help="resume.zip's size limit in MB: what the next session can carry beside code and data (--carry-check says; default 6)")
    a("--carry-check", type=Path, default=None, metavar="DIR",
      help="print what a session resuming from DIR carries (code, data/train, DIR's resume.zip and summary.json) against 64 MiB, then exit")
    a("--evaluate", type=Path, default=None, metavar="DIR",
      help="score every finished model of the run in DIR (summary.json, models-*.zip) on the --val sets it lacks, then exit")
    args = ap.parse_args(argv)
    if args.report is not None or args.carry_check is not None:
        return args  # reading a summary or sizes needs none of the run's inputs
    if not args.pack_mb > 0:
        raise Fail(f"--pack-mb {args.pack_mb}: must be positive")
    if args.evaluate is not None:
        args.val = args.val or default_val(urban100=True)
        args.device = args.device or "auto"
        for v in args.val:
            if not v.is_dir():
                raise Fail(f"--val {v}: no such folder")
        return args

    args.student_init = None if args.no_student_init is None else False
    if args.scales is not None:
        args.scales = parse_ints("--scales", args.scales, (2, 3, 4))
    if args.students is not None:
        args.students = parse_ints("--students", args.students, tuple(range(1, gp.P2_TEACHER_BLOCKS)))
    args.resume_summary, args.resume_pack = resume_source(args) if args.resume is not None else (None, None)
    if args.resume_summary is not None:
        settings = args.resume_summary.get("settings", {})
        for key in RESTORED:
            if key not in settings:
                continue
            recorded = tuple(settings[key]) if isinstance(settings[key], list) else settings[key]
            given = getattr(args, key)
            if given is not None and given != recorded:
                raise Fail(f"--{key.replace('_', '-')} {given}: this run was started with {recorded} (a resumed run keeps its settings)")
            setattr(args, key, recorded)

    smoke = bool(args.smoke)
    args.minutes_given = args.minutes is not None
    defaults = dict(plan="paper1", minutes=12.0, probe_minutes=0.5, eval_minutes=0.5, stage_overhead=5.0, batch=32, patch=48,
                    swinir_batch=16, swinir_patch=64, device="auto", scales=gp.P2_SCALES, students=gp.P2_STUDENTS,
                    feat_loss="l1", feat_weight=0.1, alpha=0.75, p2_teacher_weight=0.5, p2_teacher_cache="ram",
                    kd_teacher_cache="off", safety=0.92, seed=0, student_init=True, smoke=False)
    if smoke:
        n_stages = len(gp.plan_stages(args.plan or "paper1", args.scales or gp.P2_SCALES,
                                      gp.P2_STUDENTS if args.students is None else args.students))
        defaults.update(minutes=SMOKE["minutes"], probe_minutes=SMOKE["probe_minutes"], eval_minutes=SMOKE["eval_minutes"],
                        stage_overhead=min(2.0, SMOKE["stage_overhead"] / max(1, n_stages)), batch=SMOKE["batch"],
                        patch=SMOKE["patch"], swinir_batch=SMOKE["batch"], swinir_patch=SMOKE["patch"], device="cpu")
        args.threads = args.threads or 1
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.resume_summary is not None and not args.minutes_given:
        args.minutes = float(args.resume_summary.get("budget_s", args.minutes * 60.0)) / 60.0
    if args.call_minutes is None:
        # Under the device tool ($OUT set) a command runs at most 10 minutes: stop cleanly before it is killed.
        args.call_minutes = min(args.minutes, DEVICE_CALL_MINUTES) if os.environ.get("OUT") else args.minutes
    for name in ("minutes", "call_minutes"):
        if not getattr(args, name) > 0:
            raise Fail(f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive")
    for name in ("probe_minutes", "eval_minutes", "stage_overhead"):
        if getattr(args, name) < 0:
            raise Fail(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 0")
    if args.probe_minutes + args.eval_minutes >= args.minutes:
        raise Fail(f"--probe-minutes {args.probe_minutes} + --eval-minutes {args.eval_minutes} leave no time of --minutes {args.minutes}")
    for name in ("batch", "patch", "swinir_batch", "swinir_patch"):
        if getattr(args, name) < 1:
            raise Fail(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if not 0 < args.safety <= 1:
        raise Fail(f"--safety {args.safety}: must lie in (0, 1]")
    if not 0 <= args.alpha <= 1:
        raise Fail(f"--alpha {args.alpha}: must lie in [0, 1]")
    if not args.p2_teacher_weight > 0:
        raise Fail(f"--p2-teacher-weight {args.p2_teacher_weight}: must be positive")
    for name in ("swinir_lr", "swinir_student_lr", "teacher_lr", "student_lr"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise Fail(f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive")
    if args.p2_teacher is not None:
        try:
            args.p2_teacher.format(s=2)
        except (KeyError, IndexError, ValueError):
            raise Fail(f"--p2-teacher {args.p2_teacher}: only {{s}} (the scale) may stand in braces") from None
    args.stages = gp.plan_stages(args.plan, args.scales, args.students, args.student_init)
    if not args.stages:
        raise Fail(f"--plan {args.plan} --scales {','.join(map(str, args.scales))}: no stage to run")
    recorded_shares = (args.resume_summary or {}).get("settings", {}).get("shares")
    args.share_map = parse_shares(args.shares, args.stages, recorded_shares)
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("out/gpu-run")
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
    return args


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


def read_summary(path: Path, option: str = "--resume") -> Dict[str, Any]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Fail(f"{option}: {path} is not readable JSON ({e})") from None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        raise Fail(f"{option}: {path} is not a gpu_run summary")
    return summary


def resume_source(args: argparse.Namespace) -> Tuple[Optional[Dict[str, Any]], Optional[Path]]:
    """The summary a --resume continues, and the resume pack to lay out in --work (None: --work is current)."""
    prev = args.work / "summary.json"
    current = read_summary(prev) if prev.is_file() else None
    if args.resume is True:
        return current, None
    src = Path(args.resume)
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
                    summary = here  # the same point of the run, with what --evaluate added here
        elif src.is_file():
            pack, summary = src, gs.read_pack_summary(src)
        else:
            raise Fail(f"--resume {src}: no such folder or file")
    except SrkdError as e:
        raise Fail(f"--resume {e}") from None
    if summary.get("format") != FORMAT:
        raise Fail(f"--resume {src}: its summary.json is not a gpu_run summary")
    if current is not None:
        if current.get("started") != summary.get("started"):
            raise Fail(f"--work {args.work}: holds another run; give --resume {src} an empty --work")
        if current.get("invocations", 0) >= summary.get("invocations", 0):
            return current, None  # a second call on the same machine: --work is at least as far on
    return summary, pack


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


# ---------------------------------------------------------------------------------------------- files


def write_json(path: Path, obj: Any) -> None:
    from srkd_cli.atomic import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n"))


def copy_atomic(src: Path, dest: Path) -> None:
    from srkd_cli.atomic import atomic_write

    atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))


def read_log(path: Path) -> List[Dict[str, Any]]:
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a torn last line
    return out


def thin(records: List[Dict[str, Any]], keep: int = 60) -> List[Dict[str, Any]]:
    """At most `keep` training records (evenly spaced, the last kept) plus every validation."""
    train = [r for r in records if r.get("event") == "train"]
    step = max(1, -(-len(train) // keep))
    kept = train[::step]
    if train and kept[-1] is not train[-1]:
        kept.append(train[-1])
    return sorted(kept + [r for r in records if r.get("event") != "train"], key=lambda r: r.get("step", 0))


# ---------------------------------------------------------------------------------------------- the run


class Run:
    def __init__(self, args: argparse.Namespace):
        self.t0 = T0 if _RUNS[0] == 0 else time.monotonic()
        _RUNS[0] += 1
        self.args = args
        self.out, self.work = args.out, args.work
        self.plan: List[gp.StageSpec] = list(args.stages)
        self.specs = {s.name: s for s in self.plan}
        self.shares: Dict[str, float] = args.share_map
        # SIGINT/SIGTERM: stop after the current step (the trainer's own StopFlag takes over while it trains)
        self.stopper = StopFlag(lambda s: print(f"{self.clock()} signal {s}: stopping after the current step", flush=True))
        self.summary: Dict[str, Any] = {}
        self.elapsed_before = 0.0
        self.call_end = self.t0 + args.call_minutes * 60.0
        self.out_of_time = False
        self.parts: List[List[str]] = []  # this invocation's models-N.zip parts, by stage name
        self.pairs: Dict[Any, Any] = {}  # evaluation pairs, decoded once per (set, scale)
        self.device_name = ""

    # -- time
    def elapsed(self) -> float:
        """Budget seconds spent, earlier invocations (--resume) included."""
        return self.elapsed_before + time.monotonic() - self.t0

    def clock(self) -> str:
        s = int(self.elapsed())
        return f"[{s // 60:02d}:{s % 60:02d}]"

    # -- output
    def log(self, msg: str, file_only: bool = False) -> None:
        line = f"{self.clock()} {msg}"
        if not file_only:
            print(line, flush=True)
        for folder in (self.work, self.out):
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "gpu_run.log", "a") as f:
                f.write(line + "\n")

    def save(self) -> None:
        self.summary["elapsed_s"] = round(self.elapsed(), 1)
        self.summary["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_json(self.work / "summary.json", self.summary)
        copy_atomic(self.work / "summary.json", self.out / "summary.json")

    def checkpoint(self) -> None:
        """summary.json, then resume.zip: what --out must hold whenever this invocation ends."""
        self.save()
        self.write_resume()
        self.save()  # with the pack's size

    def write_resume(self) -> None:
        """resume.zip: the summary, the log, the float16 weights the open stages read (a teacher; a start not yet
        taken), their training states compacted as little as --pack-mb allows (gpu_state.LEVELS)."""
        limit = self.args.pack_mb * 1e6
        for level in range(len(gs.LEVELS)):
            members: Dict[str, gs.Member] = {"summary.json": (json.dumps(self.summary, indent=1) + "\n").encode()}
            if (self.work / "gpu_run.log").is_file():
                members["gpu_run.log"] = self.work / "gpu_run.log"
            states = []
            for spec in self.plan:
                st = self._stage_record(spec)
                if st["status"] in FINAL:
                    continue
                state = self.work / spec.name / "state.pt"
                started = st["status"] in ("running", "paused") and state.is_file()
                for name in ([spec.teacher] if started else spec.needs()):  # a begun stage took its start already
                    src = self.source(name) if name else None
                    if src is not None:
                        members[f"{gs.WEIGHTS_DIR}/{name}.safetensors"] = src
                if started:
                    members[f"{gs.RUNS_DIR}/{spec.name}/state.pt"] = gs.state_bytes(state, level)
                    if (self.work / spec.name / "log.jsonl").is_file():
                        members[f"{gs.RUNS_DIR}/{spec.name}/log.jsonl"] = self.work / spec.name / "log.jsonl"
                    states.append(spec.name)
            size = gs.write_zip(self.out / gs.RESUME_PACK, members)
            if size <= limit or not states:
                break
        self.summary["resume_pack"] = {"bytes": size, "level": level if states else None, "states": states,
                                       "weights": sorted(k.split("/")[1] for k in members if k.startswith(gs.WEIGHTS_DIR + "/"))}
        if states and (level or size > limit):
            self.log(f"resume.zip: {size / 1e6:.1f} MB, states of {', '.join(states)} at level {level} "
                     f"(left out: {', '.join(gs.LEVELS[level]) or 'nothing'}) for --pack-mb {self.args.pack_mb:g}"
                     + ("; STILL OVER: the next session cannot carry it beside the code and data (docs/training.md)"
                        if size > limit else ""))

    def export(self, src: Path, name: str) -> Tuple[Path, Optional[str]]:
        """Weights go to --work (the master copy) and into this invocation's models pack in --out."""
        kept = self.work / f"{name}.safetensors"
        if src != kept:
            copy_atomic(src, kept)
        return kept, self.send(name)

    def send(self, name: str) -> Optional[str]:
        """Add a model to this invocation's models-N.zip (a new part when one would pass 15 MiB); the part's name,
        or None when the device tool's 8 files / 64 MiB would be passed (the weights stay in --work)."""
        inv = int(self.summary.get("invocations", 1))
        size = (self.work / f"{name}.safetensors").stat().st_size
        parts = [list(p) for p in self.parts]
        if not parts or sum((self.work / f"{n}.safetensors").stat().st_size for n in parts[-1]) + size > gs.MAX_PART:
            parts.append([])
        parts[-1].append(name)
        zname = gs.part_name(inv, len(parts))
        others = [f for f in self.out.iterdir() if f.is_file() and f.name != zname]
        total = sum(f.stat().st_size for f in others) + sum((self.work / f"{n}.safetensors").stat().st_size for n in parts[-1])
        if len(others) + 1 > OUT_FILES or total > OUT_BYTES - OUT_HEADROOM:
            self.log(f"{name}: not returned in --out (the device tool returns at most {OUT_FILES} files, "
                     f"{OUT_BYTES // 2**20} MiB): its weights stay in {self.work}")
            return None
        gs.write_zip(self.out / zname, {f"{n}.safetensors": self.work / f"{n}.safetensors" for n in parts[-1]}, stored=True)
        self.parts = parts
        return zname

    def source(self, name: str) -> Optional[Path]:
        """The float16 copy of a finished stage's weights that later stages read, made once from its float32
        weights: the copy that travels in resume.zip, so a stage reads the same numbers in any session."""
        half = self.work / gs.WEIGHTS_DIR / f"{name}.safetensors"
        if half.is_file():
            return half
        full = self.work / f"{name}.safetensors"
        spec = self.specs.get(name)
        if spec is None or not full.is_file() or self._stage_record(spec)["status"] not in ("done", "stopped"):
            return None
        data = gs.half_weights(full)
        from srkd_cli.atomic import atomic_write

        return atomic_write(half, lambda tmp: tmp.write_bytes(data))

    @property
    def stop_signal(self) -> Optional[int]:
        return self.stopper.signal

    @stop_signal.setter
    def stop_signal(self, signum: Optional[int]) -> None:
        self.stopper.signal = signum

    # -- main
    def main(self) -> int:
        with self.stopper:
            self.out.mkdir(parents=True, exist_ok=True)
            self.work.mkdir(parents=True, exist_ok=True)
            self._start_or_resume()
            try:
                return self._main()
            finally:
                if self.summary:
                    self.checkpoint()  # whatever happened, the summary and the resume pack on disk are the latest

    def _main(self) -> int:
        import torch

        from srkd_cli.inference import pick_device

        a = self.args
        if a.threads:
            torch.set_num_threads(a.threads)
        self.device = pick_device(a.device)
        self.env_report(torch)
        bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.amp = gp.use_bf16(self.device.type, bf16)
        self.summary["precision"] = "bf16 autocast" if self.amp else "fp32"
        if self.device.type == "cuda":
            # TF32 for what autocast leaves in fp32 (losses, evaluation): same speed class, ample precision.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.log(
            f"precision {self.summary['precision']}; channels_last for the convnets, HR images held on {self.device.type} "
            f"and LR patches made there with MATLAB bicubic (the trainer's data path); fused Adam on CUDA"
        )
        probed_on = self.summary.get("probe", {}).get("device")
        if "probe" in self.summary and probed_on not in (None, self.device_name):
            self.log(f"probe: measured on {probed_on}, this is {self.device_name}: probing again")
            del self.summary["probe"]
        if "probe" not in self.summary:
            self.probe()
            self.checkpoint()
            if "probe" not in self.summary:
                return self.finish()
        for i, spec in enumerate(self.plan):
            if self._should_stop():
                break
            self.stage(spec, i)
        return self.finish()

    def _start_or_resume(self) -> None:
        a, prev = self.args, self.work / "summary.json"
        restored: List[str] = []
        if a.resume_pack is not None:
            restored = gs.unpack(a.resume_pack, self.work)
            write_json(prev, a.resume_summary)  # the summary chosen (a copy here may hold --evaluate's scores)
        if a.resume is not None and prev.is_file():
            self.summary = read_summary(prev)
            self.elapsed_before = float(self.summary.get("elapsed_s", 0.0))
            if a.minutes_given:
                self.summary["budget_s"] = a.minutes * 60.0  # e.g. more time for the stages left
            self.summary.setdefault("settings", {})["shares"] = a.share_map
            # --out may be a fresh, empty folder (the device tool empties $OUT): the log goes on from the whole of it.
            if (self.work / "gpu_run.log").is_file():
                copy_atomic(self.work / "gpu_run.log", self.out / "gpu_run.log")
            self.summary["invocations"] = self.summary.get("invocations", 1) + 1
            self.log(f"resuming {a.resume_pack or prev}: {self.elapsed_before:.0f} s of {self.summary['budget_s']:.0f} s spent"
                     + (f"; training states of {', '.join(restored)} restored from float16/bfloat16" if restored else ""))
            return
        if a.resume is None and prev.is_file():
            raise Fail(f"--work {self.work}: already holds a run (summary.json); pass --resume or choose another --work")
        # A fresh run: nothing of an earlier one may leak in (a KD stage would take an old teacher).
        for f in [*self.work.glob("*.safetensors"), *(self.work / gs.WEIGHTS_DIR).glob("*.safetensors"),
                  self.work / "gpu_run.log", self.out / "gpu_run.log"]:
            f.unlink(missing_ok=True)
        self.summary = {
            "format": FORMAT,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
            "command": " ".join(["research/gpu/gpu_run.py", *sys.argv[1:]]),
            "smoke": a.smoke,
            "plan": a.plan,
            "budget_s": a.minutes * 60.0,
            "settings": {
                "plan": a.plan, "probe_minutes": a.probe_minutes, "eval_minutes": a.eval_minutes,
                "stage_overhead": a.stage_overhead, "shares": a.share_map, "batch": a.batch, "patch": a.patch,
                "swinir_batch": a.swinir_batch, "swinir_patch": a.swinir_patch, "teacher_lr": a.teacher_lr,
                "student_lr": a.student_lr, "swinir_lr": a.swinir_lr, "swinir_student_lr": a.swinir_student_lr,
                "feat_loss": a.feat_loss, "feat_weight": a.feat_weight, "alpha": a.alpha, "scales": list(a.scales),
                "students": list(a.students), "p2_teacher": a.p2_teacher, "p2_teacher_weight": a.p2_teacher_weight,
                "p2_teacher_cache": a.p2_teacher_cache, "kd_teacher_cache": a.kd_teacher_cache, "compile": a.compile,
                "safety": a.safety, "seed": a.seed, "smoke": a.smoke, "data": [str(d) for d in a.data],
                "val": [str(v) for v in a.val], "student_init": a.student_init,
            },
            "stages_planned": [s.name for s in self.plan],
            "stages": [],
            "complete": False,
            "invocations": 1,
        }

    def env_report(self, torch) -> None:
        env = {
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": str(self.device), "cpu_threads": torch.get_num_threads(),
        }
        if self.device.type == "cuda":
            p = torch.cuda.get_device_properties(self.device)
            env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                       multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
        self.device_name = env.get("gpu") or str(self.device)
        self.summary.setdefault("env_history", []).append(env)
        self.summary["env"] = env
        self.log("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))

    # -- training calls
    def config(self, arch: str, scale: int, out: Path, blocks: Optional[int] = None, role: str = "teacher", **kw: Any):
        from srkd_cli.training import TrainConfig

        a = self.args
        big = arch == "swinir"
        arch_config = dict(SMOKE_ARCH[arch]) if a.smoke else {}
        if big:
            arch_config["blocks"] = blocks or gp.P2_TEACHER_BLOCKS
            lr = a.swinir_lr if role == "teacher" else a.swinir_student_lr
        else:
            lr = a.teacher_lr if arch == "edsr-t" else (a.student_lr if arch == "squeezesr" else None)
        base = dict(
            arch=arch, scale=scale, data=list(a.data), out=out, arch_config=arch_config,
            batch=a.swinir_batch if big else a.batch, patch=a.swinir_patch if big else a.patch, lr=lr,
            val_every=0, ckpt_every=0, log_every=SMOKE["log_every"] if a.smoke else 50, precision="bf16" if self.amp else "fp32",
            device=str(self.device), threads=a.threads, seed=a.seed, quiet=True,
            command=f"research/gpu/gpu_run.py stage {out.name} ({self.summary['command']})",
        )
        base.update(kw)
        return TrainConfig(**base)

    def probe(self) -> None:
        from srkd_cli.training import train

        a = self.args
        total = a.probe_minutes * 60.0
        archs: Dict[str, Any] = {}
        self.summary["probe"] = {"archs": archs, "seconds": total, "device": self.device_name}
        log_every = SMOKE["log_every"] if a.smoke else 20
        t_probe = time.monotonic()
        for arch, weight in PROBES[a.plan].items():
            if self._should_stop():
                return
            run = self.work / f"probe-{arch}"
            shutil.rmtree(run, ignore_errors=True)
            cfg = self.config(arch, 2, run, steps=10**6, time_limit=total * weight, log_every=log_every)
            t = time.monotonic()
            try:
                if train(cfg).stop_reason in ("interrupted", "terminated"):
                    self.stop_signal = signal.SIGTERM
                    del self.summary["probe"]  # incomplete: --resume probes again
                    return
            except Exception as e:  # noqa: BLE001 - one probe failing (e.g. out of memory) must not end the run
                archs[arch] = {"error": f"{type(e).__name__}: {e}"}
                self.log(f"probe {arch}: failed: {type(e).__name__}: {e}")
                continue
            rate, _ = gp.steady_rate(read_log(run / "log.jsonl"))
            archs[arch] = {"scale": 2, "batch": cfg.batch, "patch": cfg.patch or 48, "steps_per_s": rate,
                           "wall_s": round(time.monotonic() - t, 2)}
            if arch == "swinir":
                archs[arch]["blocks"] = cfg.arch_config["blocks"]
            self.log(f"probe {arch} x2 batch {cfg.batch} patch {cfg.patch}: {rate or 0:.2f} steps/s "
                     f"({(rate or 0) * 60:.0f} steps/min, {(rate or 0) * cfg.batch:.0f} samples/s)")
        trained = {s.arch for s in self.plan}
        if self.stop_signal is None and a.compile == "auto" and self.device.type == "cuda":
            for arch in PROBES[a.plan]:  # the trained architectures only
                if arch not in trained or self._should_stop() or not archs.get(arch, {}).get("steps_per_s"):
                    continue
                archs[arch]["compiled"] = self.probe_compiled(arch, archs[arch]["steps_per_s"])
        elif a.compile == "auto":
            self.log(f"compile: off (inductor is only worth its compile time on CUDA; device {self.device.type})")
        if self.stop_signal is not None:
            self.summary.pop("probe", None)
            return
        self.summary["probe"]["wall_s"] = round(time.monotonic() - t_probe, 1)

    def probe_compiled(self, arch: str, eager_rate: float) -> Dict[str, Any]:
        """Compile time and compiled steps/s: the first interval holds the compilation."""
        from srkd_cli.training import train

        run = self.work / f"probe-{arch}-compiled"
        shutil.rmtree(run, ignore_errors=True)
        every = max(20, int(eager_rate))  # about a second per interval
        cfg = self.config(arch, 2, run, steps=10**6, compile=True, log_every=every, stop_after=every * 5)
        t = time.monotonic()
        try:
            if train(cfg).stop_reason in ("interrupted", "terminated"):
                self.stop_signal = signal.SIGTERM
                return {"error": "interrupted"}
        except Exception as e:  # noqa: BLE001 - a compiler failure means: stay eager
            self.log(f"probe {arch} compiled: failed ({type(e).__name__}: {e}); staying eager")
            return {"error": f"{type(e).__name__}: {e}"}
        recs = read_log(run / "log.jsonl")
        rate, first_s = gp.steady_rate(recs)
        iv = gp.interval_rates(recs)
        comp = gp.compile_seconds(first_s, iv[0][0], rate) if rate and iv else None
        self.log(f"probe {arch} compiled: {rate or 0:.2f} steps/s after {comp or 0:.1f} s of compilation (eager {eager_rate:.2f})")
        return {"steps_per_s": rate, "compile_s": comp, "wall_s": round(time.monotonic() - t, 1)}

    # -- stages
    def _stage_record(self, spec: gp.StageSpec) -> Dict[str, Any]:
        for st in self.summary["stages"]:
            if st["name"] == spec.name:
                return st
        st = {"name": spec.name, "arch": spec.arch, "scale": spec.scale, "kd": spec.kd, "paper": spec.paper,
              "role": spec.role, "status": "pending"}
        if spec.blocks is not None:
            st["blocks"] = spec.blocks
        self.summary["stages"].append(st)
        return st

    def _skip(self, st: Dict[str, Any], reason: str) -> None:
        st.update(status="skipped", reason=reason)
        self.log(f"{st['name']}: skipped, {reason}")
        self.save()

    def _rates(self, spec: gp.StageSpec) -> Dict[str, Optional[float]]:
        """Eager and compiled steps/s estimates: the last finished stage of the same kind on this device, else the probe."""
        probe = self.summary.get("probe", {}).get("archs", {})

        def rate(p: Dict[str, Any], compiled: bool) -> Optional[float]:
            return (p.get("compiled") or {}).get("steps_per_s") if compiled else p.get("steps_per_s")

        est: Dict[str, Optional[float]] = {}
        if spec.arch == "swinir":
            p = probe.get("swinir", {})
            ref_blocks = int(p.get("blocks", gp.P2_TEACHER_BLOCKS))
            teacher = rate(p, False)  # the teacher runs eager, on the student's batch (the same SwinIR batch)
            for compiled in (False, True):
                r = rate(p, compiled)
                s = gp.swinir_rate(r, ref_blocks, spec.blocks or gp.P2_TEACHER_BLOCKS) if r else None
                if s and spec.kd:
                    s = gp.kd_rate(s, teacher) if teacher else None
                est["compiled" if compiled else "eager"] = s
            est["compile_s"] = (p.get("compiled") or {}).get("compile_s")
        else:
            p_edsr, p_sq = probe.get("edsr-t", {}), probe.get("squeezesr", {})
            for compiled in (False, True):
                if spec.kd:
                    teacher = rate(p_edsr, False)  # the teacher runs eager: only the student is compiled
                    if teacher and p_edsr.get("batch") and p_sq.get("batch"):
                        # the teacher's forward runs on the student's batch: cost scales with the LR pixels
                        teacher *= p_edsr["batch"] * p_edsr["patch"] ** 2 / (p_sq["batch"] * p_sq["patch"] ** 2)
                    s = rate(p_sq, compiled)
                    est["compiled" if compiled else "eager"] = gp.kd_rate(s, teacher) if s and teacher else None
                else:
                    est["compiled" if compiled else "eager"] = rate(p_edsr, compiled)
            est["compile_s"] = ((p_sq if spec.kd else p_edsr).get("compiled") or {}).get("compile_s")
        measured = [st for st in self.summary["stages"]  # later measurements beat the probe, this scale's the others
                    if st.get("kd") == spec.kd and st.get("arch") == spec.arch and st.get("blocks") == spec.blocks
                    and st.get("status") in ("done", "stopped") and st.get("steps_per_s")
                    and st.get("device", self.device_name) == self.device_name]
        for st in sorted(measured, key=lambda st: st.get("scale") == spec.scale):
            est["compiled" if st.get("compile") else "eager"] = st["steps_per_s"]
        return est

    def _sources(self, spec: gp.StageSpec, st: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The TrainConfig arguments naming the stage's teacher and start; None when a required one is missing."""
        a = self.args
        kw: Dict[str, Any] = {}
        if spec.teacher:
            teacher = self.source(spec.teacher)
            if teacher is None:
                self._skip(st, f"no teacher ({spec.teacher} was not trained)")
                return None
            kw["teacher"] = str(teacher)
            if spec.paper == 1:
                kw.update(feat_loss=a.feat_loss, feat_weight=a.feat_weight)
            else:
                kw.update(alpha=a.alpha, init_from_teacher=spec.from_teacher, teacher_cache=a.kd_teacher_cache)
        elif spec.paper == 2 and spec.role == "teacher" and a.p2_teacher:
            # Output KD only (paper 2's output term): L1(S, HR) + gamma L1(S, T), the teacher's outputs cached.
            kw.update(teacher=a.p2_teacher.format(s=spec.scale), out_weight=a.p2_teacher_weight, feat_weight=0.0,
                      teacher_cache=a.p2_teacher_cache)
        if spec.init:
            start = self.source(spec.init)
            if start is not None:
                kw["init"] = str(start)  # tensors of the same name and shape: x3/x4 from x2's body
            elif spec.init_required and st["status"] not in ("running", "paused"):
                self._skip(st, f"no start ({spec.init} was not trained)")
                return None
        return kw

    def _compile_decision(self, est: Dict[str, Optional[float]], secs: float) -> Tuple[bool, str]:
        a = self.args
        if a.compile == "on":
            return True, "compile: --compile on"
        if a.compile == "auto" and self.device.type == "cuda":
            return gp.should_compile(est["eager"], est["compiled"], est["compile_s"], secs)
        return False, (f"eager: --compile {a.compile}" if a.compile == "off" else f"eager: not on CUDA ({self.device.type})")

    def stage(self, spec: gp.StageSpec, index: int) -> None:
        st = self._stage_record(spec)
        if st["status"] in FINAL:
            return
        a = self.args
        name = spec.name
        later = [s for s in self.plan[index + 1 :] if self._stage_record(s)["status"] not in FINAL]
        n_left = 1 + len(later)
        reserve = a.eval_minutes * 60.0 / len(self.plan) + a.stage_overhead
        run = self.work / name
        resuming = st["status"] in ("running", "paused") and (run / "state.pt").is_file()
        call_left = self.call_end - time.monotonic() - reserve
        if call_left <= 0:
            return  # this invocation's time is up (--call-minutes); the stage keeps its state for --resume
        kw = self._sources(spec, st)
        if kw is None:
            return
        minimum = SMOKE["log_every"] if a.smoke else 100

        if resuming:
            seconds_left = max(1.0, st["seconds_allotted"] - st.get("seconds", 0.0))
            self.log(f"{name}: resuming at its state.pt (step {st.get('steps', '?')}), {seconds_left:.0f} s of its "
                     f"{st['seconds_allotted']:.0f} s left")
        else:
            left = gp.training_seconds(self.summary["budget_s"], self.elapsed(), reserve, n_left)
            if left <= 0:
                self.out_of_time = True  # the later stages, too: none may run after one was dropped for time
            est = self._rates(spec)
            target: Optional[int] = None
            if spec.role == "twin":
                kd = self._stage_record(self.specs[spec.twin_of])
                if kd["status"] not in ("done", "stopped") or not kd.get("steps"):
                    self._skip(st, f"its KD student {spec.twin_of} did not train")
                    return
                # The same schedule as its student, stopped where the student stopped.
                steps, target = int(kd["steps_planned"]), int(kd["steps"])
                # (a shared CPU's rate swings more than a GPU's: --smoke gives twins four times the estimate)
                need = gp.twin_seconds(target, est["eager"] or 0.0, TWIN_SLACK / 2 if a.smoke else TWIN_SLACK)
                secs = 0.0 if self.out_of_time else (min(need, left) if need > 0 else left)
            else:
                shared = [s.name for s in later if s.name in self.shares]
                secs = 0.0 if self.out_of_time else gp.stage_seconds(left, self.shares, name, shared)
                twin = next((s for s in later if s.twin_of == name), None)
                if twin is not None and secs > 0:  # the student's share pays for its twin's same steps
                    secs, _ = gp.pair_split(secs, est["eager"] or 0.0, self._rates(twin)["eager"] or 0.0)
            if secs <= 0:
                self._skip(st, "no time left in the budget" if self.out_of_time else "a zero share")
                return
            compile_, why = self._compile_decision(est, secs)
            rate = est["compiled"] if compile_ else est["eager"]
            if target is None:
                train_s = secs - (est["compile_s"] or 0.0) if compile_ else secs
                steps = gp.plan_steps(rate or 0.0, train_s, a.safety, minimum=minimum)
            if call_left < 0.25 * secs:
                self.log(f"{name}: left for the next call (--resume): {call_left:.0f} s of this call left, the stage needs {secs:.0f} s")
                self.call_end = time.monotonic()  # nothing else starts in this call either
                return
            st.update(status="running", seconds_allotted=round(secs, 1), steps_planned=steps, compile=compile_,
                      compile_reason=why, rate_estimate=rate, amp=self.amp, init=kw.get("init"), teacher=kw.get("teacher"),
                      ckpt_every=gp.checkpoint_every(rate or 0.0, minimum=SMOKE["log_every"] if a.smoke else 50),
                      seconds=0.0, device=self.device_name)
            if target is not None:
                st["target_steps"] = target
            if run.exists():
                shutil.rmtree(run)  # a stage that never checkpointed starts again from nothing
            seconds_left = secs
            self.log(f"{name}: {secs:.0f} s, {steps} steps planned" + (f" (stopping at {target}, as its student)" if target and target < steps else "")
                     + f" at {rate or 0:.2f} steps/s; {why}"
                     + (f"; init {Path(kw['init']).name}" if "init" in kw else "")
                     + (f"; teacher {Path(kw['teacher']).name}" if "teacher" in kw else ""))
        limit = min(seconds_left, call_left)
        self.save()  # the plan is on disk before the stage starts: a killed run can --resume it

        from srkd_cli.training import train

        target = st.get("target_steps")
        stop_after = None
        if target is not None and target < st["steps_planned"]:
            stop_after = max(1, target - (int(st.get("steps", 0)) if resuming else 0))  # counts this invocation's steps
        cfg = self.config(spec.arch, spec.scale, run, blocks=spec.blocks, role=spec.role, steps=st["steps_planned"],
                          time_limit=limit, compile=st["compile"], ckpt_every=st["ckpt_every"], resume=resuming,
                          stop_after=stop_after, **kw)
        t = time.monotonic()
        try:
            try:
                result = train(cfg)
            except RuntimeError as e:  # torch.compile's failures are RuntimeErrors: such a stage runs again eager
                if not cfg.compile or (run / "state.pt").is_file():
                    raise
                self.log(f"{name}: compiled, it failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "running it eager")
                shutil.rmtree(run, ignore_errors=True)
                st.update(compile=False, compile_reason=f"eager: compiling failed ({type(e).__name__})")
                cfg.compile = False
                cfg.time_limit = max(1.0, min(seconds_left, self.call_end - time.monotonic() - reserve))
                result = train(cfg)
        except (SrkdError, RuntimeError) as e:  # RuntimeError: e.g. CUDA out of memory; the next stages may still run
            st.update(status="failed", error=f"{type(e).__name__}: {e}", seconds=round(st.get("seconds", 0.0) + time.monotonic() - t, 1))
            self.log(f"{name}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            self.log(traceback.format_exc(), file_only=True)
            self.checkpoint()
            return
        st["seconds"] = round(st.get("seconds", 0.0) + time.monotonic() - t, 1)
        records = read_log(run / "log.jsonl")
        rate, _ = gp.steady_rate(records)
        st.update(steps=result.step, steps_per_s=rate, last_loss=result.last_loss, log=thin(records))
        if result.completed and result.final is not None:
            st["status"] = "done"
            st.pop("stop_reason", None)  # from an earlier, interrupted invocation
            weights, part = self.export(result.final, name)
        elif target is not None and result.step >= target:
            st["status"] = "done"  # a twin stopped where its student stopped
            st["stop_reason"] = f"at step {target}, where its KD student stopped"
            weights, part = self.export(self._save_partial(result, cfg, run), name)
        else:
            reason = result.stop_reason or "stopped"
            by_call = reason.startswith("time limit") and limit < seconds_left
            if reason in ("interrupted", "terminated"):
                # the trainer's handler took the signal: end this invocation after the export
                self.stop_signal = signal.SIGINT if reason == "interrupted" else signal.SIGTERM
            if reason in ("interrupted", "terminated") or by_call:
                st["status"] = "paused"  # --resume continues it from state.pt
            else:
                st["status"] = "stopped"  # its own time ran out: the EMA weights so far are the result
            st["stop_reason"] = reason
            weights, part = self.export(self._save_partial(result, cfg, run), name)
        st["weights"], st["returned_in"] = weights.name, part
        self.log(f"{name}: {st['status']} after {result.step}/{st['steps_planned']} steps in {st['seconds']:.0f} s "
                 f"({rate or 0:.2f} steps/s), loss {result.last_loss or float('nan'):.5f}"
                 + (f"; weights in {part}" if part else ""))
        self.save()
        self.evaluate(st, weights)
        self.checkpoint()

    def _save_partial(self, result, cfg, run: Path) -> Path:
        """EMA weights of a stopped run, with the trainer's provenance and why it stopped."""
        from srkd_cli.checkpoint import save_checkpoint

        prov = {**result.provenance, "planned_steps": cfg.steps, "stopped": result.stop_reason}
        return save_checkpoint(run / "partial.safetensors", result.model, result.arch, result.model_config, prov)

    def evaluate(self, st: Dict[str, Any], weights: Path) -> None:
        ev = st.setdefault("eval", {})
        ev.update(score(weights, self.args.val, self.device, self.pairs))
        self.log(f"{st['name']}: " + ", ".join(f"{k} PSNR-Y {v['psnr_y']:.2f} dB SSIM-Y {v['ssim_y']:.4f}" for k, v in ev.items()))

    def _should_stop(self) -> bool:
        return self.stop_signal is not None

    def finish(self) -> int:
        stages = {s["name"]: s for s in self.summary["stages"]}
        names = [s.name for s in self.plan]
        open_ = [n for n in names if stages.get(n, {}).get("status") in (None, "pending", "running", "paused")]
        self.summary["complete"] = not open_
        self.checkpoint()
        self.log("summary: " + ", ".join(f"{n} {stages[n]['status']}" for n in names if n in stages))
        print(gp.report(self.summary), flush=True)
        if open_:
            self.log(f"not finished ({', '.join(open_)}): continue with --resume (docs/training.md, 'A GPU session')")
            return 130 if self._should_stop() else 0
        return 0


def score(weights: Path, folders: Sequence[Path], device: Any, cache: Dict[Any, Any]) -> Dict[str, Dict[str, Any]]:
    """The evaluation protocol's PSNR/SSIM (Y and RGB) of one weights file on each folder."""
    from srkd_cli.backends import build_upscaler
    from srkd_cli.checkpoint import load_checkpoint
    from srkd_cli.evaluate import evaluate_folder, load_pairs

    lm = load_checkpoint(weights, device=device)
    up, _ = build_upscaler(lm, "auto", "fp32", device)  # what `srkd eval` / `srkd upscale` run by default
    out = {}
    for folder in folders:
        key = (str(folder), lm.scale)
        if key not in cache:  # decoded (and, for an HR-only set, its LR made) once per set and scale
            cache[key] = load_pairs(folder, lm.scale)
        rec = evaluate_folder(up, weights.stem, folder, lm.scale, pairs=cache[key])
        out[folder.name] = {k: round(getattr(rec, k), 4) for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")}
        out[folder.name]["images"] = rec.n_images
    return out


def evaluate_run(args: argparse.Namespace) -> int:
    """--evaluate DIR: lay every finished model's weights out in DIR/models/ (from the pack its record names),
    then score them on the --val sets their records lack. summary.json is rewritten after each model,
    so an interrupted pass loses nothing and the next one goes on."""
    import zipfile

    import torch

    from srkd_cli.atomic import atomic_write
    from srkd_cli.inference import pick_device

    folder = args.evaluate
    path = folder / "summary.json"
    if not path.is_file():
        raise Fail(f"--evaluate {folder}: holds no summary.json (copy there the files a run returned)")
    summary = read_summary(path, "--evaluate")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cache: Dict[Any, Any] = {}
    for st in summary.get("stages", []):
        if st.get("status") not in ("done", "stopped"):
            continue
        weights = folder / "models" / f"{st['name']}.safetensors"
        found = gs.find_weights(folder, st["name"], st.get("returned_in"))
        if found is not None and found[1] is not None:
            with zipfile.ZipFile(found[0]) as z:
                data = z.read(found[1])
            atomic_write(weights, lambda tmp, d=data: tmp.write_bytes(d))
        elif found is not None and found[0] != weights:
            copy_atomic(found[0], weights)
        if not weights.is_file():
            print(f"{st['name']}: no weights in {folder} (models-*.zip, *.safetensors): not scored", flush=True)
            continue
        missing = [v for v in args.val if v.name not in st.get("eval", {})]
        if not missing:
            continue
        t = time.monotonic()
        st.setdefault("eval", {}).update(score(weights, missing, device, cache))
        write_json(path, summary)
        print(f"{st['name']}: " + ", ".join(f"{v.name} PSNR-Y {st['eval'][v.name]['psnr_y']:.3f}" for v in missing)
              + f" ({time.monotonic() - t:.0f} s on {device})", flush=True)
    print(f"weights: {folder / 'models'}", flush=True)
    print(gp.report(summary), end="", flush=True)
    return 0


CARRY_LIMIT = 64 * 2**20  # the device tool's working tree, carried paths included
SUMMARY_ROOM = 500_000  # bytes kept for summary.json growing over a session


def carry_check(folder: Path, data: Optional[List[Path]]) -> int:
    """--carry-check DIR: the bytes a session resuming from DIR carries against the device tool's 64 MiB,
    and the --pack-mb that leaves the session after it room to carry its pack."""
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                                check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError) as e:
        raise Fail(f"--carry-check: cannot list the repository's files with git ({e})") from None
    code = sum((ROOT / f).stat().st_size for f in listed if f and (ROOT / f).is_file())
    datas = data or [ROOT / "data" / "train"]
    for d in datas:
        if not d.is_dir():
            raise Fail(f"--carry-check: {d}: no such folder (the training data a session carries)")
    data_b = sum(f.stat().st_size for d in datas for f in d.rglob("*") if f.is_file())
    state = [folder / n for n in (gs.RESUME_PACK, "summary.json") if (folder / n).is_file()]
    state_b = sum(f.stat().st_size for f in state)
    total = code + data_b + state_b
    rel = [str(p.resolve().relative_to(ROOT)) if p.resolve().is_relative_to(ROOT) else str(p) for p in [*datas, *state]]
    print(f"code (git ls-files -co --exclude-standard): {code / 1e6:.2f} MB")
    print(f"data: {data_b / 1e6:.2f} MB ({', '.join(map(str, datas))})")
    print(f"state: {state_b / 1e6:.2f} MB ({', '.join(p.name for p in state) or 'none: a first session'})")
    print(f"total {total / 1e6:.2f} MB of {CARRY_LIMIT / 1e6:.2f} MB (64 MiB): {'fits' if total <= CARRY_LIMIT else 'DOES NOT FIT'}")
    print(f"carry={json.dumps(rel)}")
    room = (CARRY_LIMIT - code - data_b - SUMMARY_ROOM) / 1e6
    print(f"room for the next resume.zip: --pack-mb {max(0.0, room):.1f}")
    if total > CARRY_LIMIT:
        raise Fail(f"--carry-check {folder}: {total / 1e6:.2f} MB do not fit the 64 MiB a device call carries")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from srkd_cli.errors import SrkdError

    try:
        args = parse_args(argv)
        if args.report is not None:
            try:
                print(gp.report(json.loads(args.report.read_text())), end="")
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise Fail(f"--report {args.report}: not a readable gpu_run summary ({type(e).__name__}: {e})") from None
            return 0
        if args.evaluate is not None:
            return evaluate_run(args)
        if args.carry_check is not None:
            return carry_check(args.carry_check, args.data)
        return Run(args).main()
    except (Fail, SrkdError) as e:
        print(f"gpu_run.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpu_run.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
