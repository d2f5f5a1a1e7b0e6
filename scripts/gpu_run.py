#!/usr/bin/env python
"""One GPU session, one command: probe, train EDSR-T x2/x3/x4, distil SqueezeSR-KD x2/x3/x4, evaluate.

    python scripts/gpu_run.py --minutes 12 --out $OUT          # the whole plan in 12 minutes
    python scripts/gpu_run.py --smoke --out /tmp/smoke          # the same, tiny, on the CPU
    python scripts/gpu_run.py --report $OUT/summary.json        # the probe and results as markdown

Steps (docs/training.md, "A GPU session"):
  1. print the GPU, torch, CUDA and cuDNN versions;
  2. probe: steps/s of EDSR-T, SqueezeSR and SwinIR x2 at the planned batch/patch (eager), and,
     with --compile auto on CUDA, EDSR-T and SqueezeSR compiled, with their compile times;
  3. EDSR-T x2 from scratch, then x3 and x4 from its weights (--init); torch.compile per stage
     only where the probe's numbers say it pays (the arithmetic goes into the log);
  4. SqueezeSR-KD x2, x3, x4 distilled from those teachers (paper 1's feature recipe);
  5. after every stage: weights, Set5/Set14 scores and summary.json written to --out.

Every stage's time is its share of what is left when it starts, so time one stage leaves unused
goes to the rest; steps are planned from the measured rate so the cosine schedule ends in time,
and the stage's time limit is the backstop. Run folders (state.pt, log.jsonl) live in --work;
--out gets at most 8 files (summary.json, gpu_run.log, six .safetensors), what the device tool
returns. SIGTERM/SIGINT checkpoint and stop; --resume (same --work) continues where it stopped.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here, imports included

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
from typing import Any, Dict, List, Optional  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srkd_cli.training import gpu_plan as gp  # noqa: E402

FORMAT = "srkd-gpu-run/1"
PROBE_ARCHS = ("edsr-t", "squeezesr", "swinir")
PROBE_WEIGHTS = {"edsr-t": 0.4, "squeezesr": 0.3, "swinir": 0.3}  # of --probe-minutes
# Tiny models for --smoke: the same code paths in seconds on a CPU.
SMOKE_ARCH = {
    "edsr-t": dict(n_feats=8, modules_per_block=1),
    "squeezesr": dict(n_feats=8, squeeze=4, expand1x1=4),
    "swinir": dict(blocks=1, embed_dim=12, depth=2, num_heads=2, window_size=4),
}
SMOKE = dict(minutes=0.5, probe_minutes=0.06, eval_minutes=0.05, stage_overhead=2.0, batch=4, patch=16, log_every=5)


class Fail(Exception):
    """A problem with the options or inputs: one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        raise Fail(message)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = Parser(prog="gpu_run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--minutes", type=float, default=None, help="total time budget (default 12; --smoke: 0.5)")
    a("--out", type=Path, default=None, help="output folder (default: $OUT if set, else out/gpu-run)")
    a("--work", type=Path, default=Path("runs/gpu-run"), help="run folders with state.pt and log.jsonl (default runs/gpu-run)")
    a("--data", type=Path, action="append", help="HR training images (default data/train, else ../shared/data/train)")
    a("--val", type=Path, action="append", help="evaluation sets (default tests/data/Set5 and data/benchmark/Set14)")
    a("--resume", action="store_true", help="continue the run recorded in --work/summary.json")
    a("--call-minutes", type=float, default=None, help="stop this invocation cleanly after this long (a device call's limit); continue with --resume")
    a("--probe-minutes", type=float, default=None, help="eager probe, split across the three architectures (default 0.5)")
    a("--eval-minutes", type=float, default=None, help="time reserved for evaluating the six models (default 0.5)")
    a("--stage-overhead", type=float, default=None, help="seconds reserved per stage for set-up and export (default 5)")
    a("--shares", default=None, help="training shares, e.g. edsr-t-x2=0.5,squeezesr-kd-x4=0.08 (the rest keep their defaults)")
    a("--compile", choices=("auto", "on", "off"), default="auto", help="torch.compile: auto decides from the probe (CUDA only)")
    a("--batch", type=int, default=None, help="batch of EDSR-T and of the students (default 32; --smoke 4)")
    a("--patch", type=int, default=None, help="LR patch of EDSR-T and the students (default 48; --smoke 16)")
    a("--swinir-batch", type=int, default=None, help="SwinIR probe batch (default 16; --smoke 4)")
    a("--swinir-patch", type=int, default=None, help="SwinIR probe LR patch (default 64; --smoke 16)")
    a("--teacher-lr", type=float, default=None, help="EDSR-T peak learning rate (default 2e-4)")
    a("--student-lr", type=float, default=None, help="SqueezeSR peak learning rate (default 1e-3)")
    a("--feat-loss", choices=("l1", "mse"), default="l1", help="paper 1 feature distance")
    a("--feat-weight", type=float, default=0.1, help="paper 1 feature weight beta")
    a("--no-student-init", action="store_true", help="KD x3/x4 students start fresh instead of from the KD x2 student")
    a("--safety", type=float, default=0.92, help="planned steps = rate x seconds x this")
    a("--seed", type=int, default=0)
    a("--device", default=None, help="auto, cuda, cuda:N or cpu (default auto; --smoke cpu)")
    a("--threads", type=int, default=None, help="CPU threads for torch (--smoke: 1)")
    a("--smoke", action="store_true", help="tiny models on Set5 on the CPU: the whole pipeline in well under a minute")
    a("--report", type=Path, default=None, metavar="SUMMARY", help="print a summary.json's probe and results as markdown, then exit")
    args = ap.parse_args(argv)
    if args.report is not None:
        return args  # reading a summary needs none of the run's inputs

    smoke = args.smoke
    args.minutes_given = args.minutes is not None
    defaults = dict(minutes=12.0, probe_minutes=0.5, eval_minutes=0.5, stage_overhead=5.0, batch=32, patch=48,
                    swinir_batch=16, swinir_patch=64, device="auto")
    if smoke:
        defaults.update(minutes=SMOKE["minutes"], probe_minutes=SMOKE["probe_minutes"], eval_minutes=SMOKE["eval_minutes"],
                        stage_overhead=SMOKE["stage_overhead"], batch=SMOKE["batch"], patch=SMOKE["patch"],
                        swinir_batch=SMOKE["batch"], swinir_patch=SMOKE["patch"], device="cpu")
        args.threads = args.threads or 1
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.call_minutes is None:
        args.call_minutes = args.minutes
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
    args.share_map = parse_shares(args.shares)
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


def parse_shares(text: Optional[str]) -> Dict[str, float]:
    shares = dict(gp.DEFAULT_SHARES)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or key not in shares:
            raise Fail(f"--shares {item}: expected STAGE=FRACTION with STAGE one of {', '.join(gp.STAGES)}")
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


def default_val() -> List[Path]:
    sets = [ROOT / "tests" / "data" / "Set5"]
    for base in (ROOT / "data" / "benchmark", ROOT.parent / "shared" / "data" / "benchmark"):
        if (base / "Set14").is_dir():
            sets.append(base / "Set14")
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
        self.args = args
        self.out, self.work = args.out, args.work
        self.stop_signal: Optional[int] = None
        self.summary: Dict[str, Any] = {}
        self.elapsed_before = 0.0
        self.call_end = T0 + args.call_minutes * 60.0
        self.out_of_time = False

    # -- time
    def elapsed(self) -> float:
        """Budget seconds spent, earlier invocations (--resume) included."""
        return self.elapsed_before + time.monotonic() - T0

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

    def export(self, src: Path, name: str) -> Path:
        """Weights go to --work (the master copy a --resume re-sends) and to --out."""
        kept = self.work / f"{name}.safetensors"
        if src != kept:
            copy_atomic(src, kept)
        copy_atomic(kept, self.out / kept.name)
        return kept

    # -- signals: the trainer installs its own while it trains and restores these afterwards
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_signal = signum
        print(f"{self.clock()} signal {signum}: stopping after the current step", flush=True)

    # -- main
    def main(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self._start_or_resume()
        try:
            return self._main()
        finally:
            if self.summary:
                self.save()  # whatever happened, the summary on disk is the latest

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
        if "probe" not in self.summary:
            self.probe()
            self.save()
            if "probe" not in self.summary:
                return self.finish()
        for i, name in enumerate(gp.STAGES):
            if self._should_stop():
                break
            self.stage(name, i)
        return self.finish()

    def _start_or_resume(self) -> None:
        a, prev = self.args, self.work / "summary.json"
        if a.resume and prev.is_file():
            try:
                self.summary = json.loads(prev.read_text())
            except ValueError as e:
                raise Fail(f"--resume: {prev} is not readable JSON ({e})") from None
            if self.summary.get("format") != FORMAT:
                raise Fail(f"--resume: {prev} is not a gpu_run summary")
            self.elapsed_before = float(self.summary.get("elapsed_s", 0.0))
            if a.minutes_given:
                self.summary["budget_s"] = a.minutes * 60.0  # e.g. more time for the stages left
            # --out may be a fresh, empty folder (the device tool empties $OUT): send everything again.
            for f in [*self.work.glob("*.safetensors"), self.work / "gpu_run.log"]:
                if f.is_file():
                    copy_atomic(f, self.out / f.name)
            self.summary["invocations"] = self.summary.get("invocations", 1) + 1
            self.log(f"resuming {prev}: {self.elapsed_before:.0f} s of {self.summary['budget_s']:.0f} s spent")
            return
        if not a.resume and prev.is_file():
            raise Fail(f"--work {self.work}: already holds a run (summary.json); pass --resume or choose another --work")
        # A fresh run: nothing of an earlier one may leak in (a KD stage would take an old teacher).
        for f in [*self.work.glob("*.safetensors"), self.work / "gpu_run.log", self.out / "gpu_run.log"]:
            f.unlink(missing_ok=True)
        self.summary = {
            "format": FORMAT,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["scripts/gpu_run.py", *sys.argv[1:]]),
            "smoke": a.smoke,
            "budget_s": a.minutes * 60.0,
            "settings": {
                "probe_minutes": a.probe_minutes, "eval_minutes": a.eval_minutes, "stage_overhead_s": a.stage_overhead,
                "shares": a.share_map, "batch": a.batch, "patch": a.patch, "swinir_batch": a.swinir_batch,
                "swinir_patch": a.swinir_patch, "teacher_lr": a.teacher_lr, "student_lr": a.student_lr,
                "feat_loss": a.feat_loss, "feat_weight": a.feat_weight, "compile": a.compile, "safety": a.safety,
                "seed": a.seed, "data": [str(d) for d in a.data], "val": [str(v) for v in a.val],
                "student_init": not a.no_student_init,
            },
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
        self.summary.setdefault("env_history", []).append(env)
        self.summary["env"] = env
        self.log("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))

    # -- training calls
    def arch_config(self, arch: str) -> Dict[str, Any]:
        return dict(SMOKE_ARCH[arch]) if self.args.smoke else {}

    def config(self, arch: str, scale: int, out: Path, **kw: Any):
        from srkd_cli.training import TrainConfig

        a = self.args
        big = arch == "swinir"
        base = dict(
            arch=arch, scale=scale, data=list(a.data), out=out, arch_config=self.arch_config(arch),
            batch=a.swinir_batch if big else a.batch, patch=a.swinir_patch if big else a.patch,
            lr=a.teacher_lr if arch == "edsr-t" else (a.student_lr if arch == "squeezesr" else None),
            val_every=0, ckpt_every=0, log_every=SMOKE["log_every"] if a.smoke else 50, amp=self.amp,
            device=str(self.device), threads=a.threads, seed=a.seed, quiet=True,
            command=f"scripts/gpu_run.py stage {out.name} ({self.summary['command']})",
        )
        base.update(kw)
        return TrainConfig(**base)

    def probe(self) -> None:
        from srkd_cli.training import train

        a = self.args
        total = a.probe_minutes * 60.0
        archs: Dict[str, Any] = {}
        self.summary["probe"] = {"archs": archs, "seconds": total}
        log_every = SMOKE["log_every"] if a.smoke else 20
        t_probe = time.monotonic()
        for arch in PROBE_ARCHS:
            if self._should_stop():
                return
            run = self.work / f"probe-{arch}"
            shutil.rmtree(run, ignore_errors=True)
            cfg = self.config(arch, 2, run, steps=10**6, time_limit=total * PROBE_WEIGHTS[arch], log_every=log_every)
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
            self.log(f"probe {arch} x2 batch {cfg.batch} patch {cfg.patch}: {rate or 0:.2f} steps/s "
                     f"({(rate or 0) * 60:.0f} steps/min, {(rate or 0) * cfg.batch:.0f} samples/s)")
        if self.stop_signal is None and a.compile == "auto" and self.device.type == "cuda":
            for arch in ("edsr-t", "squeezesr"):  # the trained architectures; SwinIR is only probed
                if self._should_stop() or not archs.get(arch, {}).get("steps_per_s"):
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
    def _stage_record(self, name: str) -> Dict[str, Any]:
        for st in self.summary["stages"]:
            if st["name"] == name:
                return st
        arch, scale, kd = gp.stage_arch(name)
        st = {"name": name, "arch": arch, "scale": scale, "kd": kd, "status": "pending"}
        self.summary["stages"].append(st)
        return st

    def _rates(self, name: str) -> Dict[str, Optional[float]]:
        """Eager and compiled steps/s estimates: the last finished stage of the same kind, else the probe."""
        arch, _, kd = gp.stage_arch(name)
        probe = self.summary.get("probe", {}).get("archs", {})
        p_edsr, p_sq = probe.get("edsr-t", {}), probe.get("squeezesr", {})

        def rate(p: Dict[str, Any], compiled: bool) -> Optional[float]:
            return (p.get("compiled") or {}).get("steps_per_s") if compiled else p.get("steps_per_s")

        est: Dict[str, Optional[float]] = {}
        for compiled in (False, True):
            if kd:
                teacher = rate(p_edsr, False)  # the teacher runs eager: only the student is compiled
                if teacher and p_edsr.get("batch") and p_sq.get("batch"):
                    # the teacher's forward runs on the student's batch: cost scales with the LR pixels
                    teacher *= p_edsr["batch"] * p_edsr["patch"] ** 2 / (p_sq["batch"] * p_sq["patch"] ** 2)
                s = rate(p_sq, compiled)
                est["compiled" if compiled else "eager"] = gp.kd_rate(s, teacher) if s and teacher else None
            else:
                est["compiled" if compiled else "eager"] = rate(p_edsr, compiled)
        for st in self.summary["stages"]:  # later measurements beat the probe
            if st.get("kd") == kd and st.get("arch") == arch and st.get("status") in ("done", "stopped") and st.get("steps_per_s"):
                est["compiled" if st.get("compile") else "eager"] = st["steps_per_s"]
        est["compile_s"] = ((p_sq if kd else p_edsr).get("compiled") or {}).get("compile_s")
        return est

    def stage(self, name: str, index: int) -> None:
        st = self._stage_record(name)
        if st["status"] in ("done", "stopped", "failed", "skipped"):
            return
        a = self.args
        arch, scale, kd = gp.stage_arch(name)
        later = [s for s in gp.STAGES[index + 1 :] if self._stage_record(s)["status"] not in ("done", "stopped", "failed", "skipped")]
        n_left = 1 + len(later)
        reserve = a.eval_minutes * 60.0 / len(gp.STAGES) + a.stage_overhead
        run = self.work / name
        resuming = st["status"] in ("running", "paused") and (run / "state.pt").is_file()
        call_left = self.call_end - time.monotonic() - reserve
        if call_left <= 0:
            return  # this invocation's time is up (--call-minutes); the stage keeps its state for --resume

        kw: Dict[str, Any] = {}
        if kd:
            teacher = self.work / f"edsr-t-x{scale}.safetensors"
            if not teacher.is_file():
                st.update(status="skipped", reason=f"no teacher ({teacher.name} was not trained)")
                self.log(f"{name}: skipped, {st['reason']}")
                self.save()
                return
            kw.update(teacher=str(teacher), feat_loss=a.feat_loss, feat_weight=a.feat_weight)
            init = self.work / "squeezesr-kd-x2.safetensors"
            if scale != 2 and not a.no_student_init and init.is_file():
                kw["init"] = str(init)
        elif scale != 2:
            init = self.work / "edsr-t-x2.safetensors"
            if init.is_file():
                kw["init"] = str(init)  # x3/x4 start from x2's body; only the upsampler starts fresh

        if resuming:
            seconds_left = max(1.0, st["seconds_allotted"] - st.get("seconds", 0.0))
            self.log(f"{name}: resuming at its state.pt, {seconds_left:.0f} s of its {st['seconds_allotted']:.0f} s left")
        else:
            left = gp.training_seconds(self.summary["budget_s"], self.elapsed(), reserve, n_left)
            secs = 0.0 if self.out_of_time else gp.stage_seconds(left, a.share_map, name, later)
            if left <= 0:
                self.out_of_time = True  # the later stages, too: none may run after one was dropped for time
            if secs <= 0:
                st.update(status="skipped", reason="no time left in the budget" if self.out_of_time else "a zero share")
                self.log(f"{name}: skipped, {st['reason']}")
                self.save()
                return
            est = self._rates(name)
            compile_ = False
            if a.compile == "on":
                compile_, why = True, "compile: --compile on"
            elif a.compile == "auto" and self.device.type == "cuda":
                compile_, why = gp.should_compile(est["eager"], est["compiled"], est["compile_s"], secs)
            else:
                why = f"eager: --compile {a.compile}" if a.compile == "off" else f"eager: not on CUDA ({self.device.type})"
            rate = est["compiled"] if compile_ else est["eager"]
            train_s = secs - (est["compile_s"] or 0.0) if compile_ else secs
            steps = gp.plan_steps(rate or 0.0, train_s, a.safety, minimum=SMOKE["log_every"] if a.smoke else 100)
            if call_left < 0.25 * secs:
                self.log(f"{name}: left for the next call (--resume): {call_left:.0f} s of this call left, the stage needs {secs:.0f} s")
                self.call_end = time.monotonic()  # nothing else starts in this call either
                return
            st.update(status="running", seconds_allotted=round(secs, 1), steps_planned=steps, compile=compile_,
                      compile_reason=why, rate_estimate=rate, amp=self.amp, init=kw.get("init"), teacher=kw.get("teacher"),
                      ckpt_every=gp.checkpoint_every(rate or 0.0, minimum=SMOKE["log_every"] if a.smoke else 50), seconds=0.0)
            if run.exists():
                shutil.rmtree(run)  # a stage that never checkpointed starts again from nothing
            seconds_left = secs
            self.log(f"{name}: {secs:.0f} s, {steps} steps planned at {rate or 0:.2f} steps/s; {why}"
                     + (f"; init {Path(kw['init']).name}" if "init" in kw else "")
                     + (f"; teacher {Path(kw['teacher']).name}" if "teacher" in kw else ""))
        limit = min(seconds_left, call_left)
        self.save()  # the plan is on disk before the stage starts: a killed run can --resume it

        from srkd_cli.errors import SrkdError
        from srkd_cli.training import train

        cfg = self.config(arch, scale, run, steps=st["steps_planned"], time_limit=limit, compile=st["compile"],
                          ckpt_every=st["ckpt_every"], resume=resuming, **kw)
        t = time.monotonic()
        try:
            result = train(cfg)
        except (SrkdError, RuntimeError) as e:  # RuntimeError: e.g. CUDA out of memory; the next stages may still run
            st.update(status="failed", error=f"{type(e).__name__}: {e}", seconds=round(st.get("seconds", 0.0) + time.monotonic() - t, 1))
            self.log(f"{name}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            self.log(traceback.format_exc(), file_only=True)
            self.save()
            return
        st["seconds"] = round(st.get("seconds", 0.0) + time.monotonic() - t, 1)
        records = read_log(run / "log.jsonl")
        rate, _ = gp.steady_rate(records)
        st.update(steps=result.step, steps_per_s=rate, last_loss=result.last_loss, log=thin(records))
        if result.completed and result.final is not None:
            st["status"] = "done"
            st.pop("stop_reason", None)  # from an earlier, interrupted invocation
            weights = self.export(result.final, name)
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
            weights = self.export(self._save_partial(result, cfg, run), name)
        st["weights"] = weights.name
        self.log(f"{name}: {st['status']} after {result.step}/{st['steps_planned']} steps in {st['seconds']:.0f} s "
                 f"({rate or 0:.2f} steps/s), loss {result.last_loss or float('nan'):.5f}")
        self.save()
        self.evaluate(st, weights)
        self.save()

    def _save_partial(self, result, cfg, run: Path) -> Path:
        """EMA weights of a stopped run, with the provenance a final.safetensors would carry."""
        import torch

        from srkd_cli.checkpoint import save_checkpoint
        from srkd_cli.training.data import data_fingerprint

        state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
        prov = {"command": cfg.command, "data": [str(d) for d in cfg.data], "data_fingerprint": data_fingerprint(cfg.data),
                "steps": result.step, "planned_steps": cfg.steps, "stopped": result.stop_reason, "batch": cfg.batch,
                "patch": cfg.patch, "seed": cfg.seed, "teacher": cfg.teacher, "init": cfg.init, **state["recipe"]}
        return save_checkpoint(run / "partial.safetensors", result.model, state["arch"], state["model_config"], prov)

    def evaluate(self, st: Dict[str, Any], weights: Path) -> None:
        from srkd_cli.checkpoint import load_checkpoint
        from srkd_cli.evaluate import evaluate_folder
        from srkd_cli.inference import Upscaler

        lm = load_checkpoint(weights, device=self.device)
        up = Upscaler(lm.model, lm.spec, lm.config, self.device, tile="auto")
        ev = st.setdefault("eval", {})
        for folder in self.args.val:
            rec = evaluate_folder(up, st["name"], folder, lm.scale)
            ev[folder.name] = {k: round(getattr(rec, k), 4) for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")}
            ev[folder.name]["images"] = rec.n_images
        self.log(f"{st['name']}: " + ", ".join(f"{k} PSNR-Y {v['psnr_y']:.2f} dB SSIM-Y {v['ssim_y']:.4f}" for k, v in ev.items()))

    def _should_stop(self) -> bool:
        return self.stop_signal is not None

    def finish(self) -> int:
        stages = {s["name"]: s for s in self.summary["stages"]}
        open_ = [n for n in gp.STAGES if stages.get(n, {}).get("status") in (None, "pending", "running", "paused")]
        self.summary["complete"] = not open_
        self.save()
        self.log("summary: " + ", ".join(f"{n} {stages[n]['status']}" for n in gp.STAGES if n in stages))
        print(gp.report(self.summary), flush=True)
        if open_:
            self.log(f"not finished ({', '.join(open_)}): rerun the same command with --resume")
            return 130 if self._should_stop() else 0
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
        return Run(args).main()
    except (Fail, SrkdError) as e:
        print(f"gpu_run.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpu_run.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
