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

Beside it: gpu_args.py (the options), gpu_plan.py (the arithmetic), gpu_state.py (the packs, files),
gpu_tools.py (--evaluate, --carry-check).
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here, imports included
_RUNS = [0]  # invocations in this process: a second (tests, in-process) counts from its own start

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List, Optional, Tuple  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_plan, gpu_state, gpu_args, gpu_tools beside it

from srkd_cli.errors import SrkdError  # noqa: E402
from srkd_cli.runtime.signals import StopFlag  # noqa: E402
import gpu_plan as gp  # noqa: E402
import gpu_state as gs  # noqa: E402
from gpu_args import FORMAT, SMOKE, SMOKE_ARCH, Fail, parse_args, read_summary  # noqa: E402
from gpu_state import copy_atomic, read_log, thin, write_json  # noqa: E402
from gpu_tools import carry_check, evaluate_run, score  # noqa: E402

# What the probe measures, with its part of --probe-minutes: paper 1 probes all three (SwinIR for
# the record), paper 2 only the SwinIR teacher it trains.
PROBES = {"paper1": {"edsr-t": 0.4, "squeezesr": 0.3, "swinir": 0.3}, "paper2": {"swinir": 1.0},
          "all": {"edsr-t": 0.3, "squeezesr": 0.2, "swinir": 0.5}}
FINAL = ("done", "stopped", "failed", "skipped")  # a stage in one of these never runs again
OUT_FILES, OUT_BYTES = 8, 64 * 2**20  # what the device tool returns at most
# A twin stops at its student's step count: its time limit is a backstop, twice the estimate.
TWIN_SLACK = 0.5
OUT_HEADROOM = 4 * 2**20  # left for summary.json, gpu_run.log and resume.zip to grow


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
        self.summary = self._new_summary()

    def _new_summary(self) -> Dict[str, Any]:
        a = self.args
        return {
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
        """Plan (or resume) one stage, train it, export and score what it made: after it, --out holds its weights."""
        st = self._stage_record(spec)
        if st["status"] in FINAL:
            return
        later = [s for s in self.plan[index + 1 :] if self._stage_record(s)["status"] not in FINAL]
        reserve = self.args.eval_minutes * 60.0 / len(self.plan) + self.args.stage_overhead
        call_left = self.call_end - time.monotonic() - reserve
        if call_left <= 0:
            return  # this invocation's time is up (--call-minutes); the stage keeps its state for --resume
        kw = self._sources(spec, st)
        if kw is None:
            return
        resuming = st["status"] in ("running", "paused") and (self.work / spec.name / "state.pt").is_file()
        if resuming:
            seconds_left = max(1.0, st["seconds_allotted"] - st.get("seconds", 0.0))
            self.log(f"{spec.name}: resuming at its state.pt (step {st.get('steps', '?')}), {seconds_left:.0f} s of its "
                     f"{st['seconds_allotted']:.0f} s left")
        else:
            planned = self._plan_stage(spec, st, later, reserve, call_left, kw)
            if planned is None:
                return
            seconds_left = planned
        limit = min(seconds_left, call_left)
        self.save()  # the plan is on disk before the stage starts: a killed run can --resume it
        trained = self._train_stage(spec, st, kw, limit, seconds_left, reserve, resuming)
        if trained is None:
            return
        weights = self._settle(st, *trained, limit, seconds_left)
        self.save()
        self.evaluate(st, weights)
        self.checkpoint()

    # -- planning a stage
    def _plan_stage(self, spec: gp.StageSpec, st: Dict[str, Any], later: List[gp.StageSpec], reserve: float,
                    call_left: float, kw: Dict[str, Any]) -> Optional[float]:
        """Seconds and steps for a stage not yet begun, from what is left of the budget, recorded in `st`; its
        seconds, or None where it does not run in this invocation (skipped, or left for the next call)."""
        a = self.args
        left = gp.training_seconds(self.summary["budget_s"], self.elapsed(), reserve, 1 + len(later))
        if left <= 0:
            self.out_of_time = True  # the later stages, too: none may run after one was dropped for time
        est = gp.stage_rates(self.summary, spec, self.device_name)
        steps: Optional[int] = None
        target: Optional[int] = None
        if spec.role == "twin":
            twin = self._twin_allotment(spec, st, left, est)
            if twin is None:
                return None
            secs, steps, target = twin
        else:
            secs = self._share_seconds(spec, later, left, est)
        if secs <= 0:
            self._skip(st, "no time left in the budget" if self.out_of_time else "a zero share")
            return None
        compile_, why = self._compile_decision(est, secs)
        rate = est["compiled"] if compile_ else est["eager"]
        if steps is None:
            train_s = secs - (est["compile_s"] or 0.0) if compile_ else secs
            steps = gp.plan_steps(rate or 0.0, train_s, a.safety, minimum=SMOKE["log_every"] if a.smoke else 100)
        if call_left < 0.25 * secs:
            self.log(f"{spec.name}: left for the next call (--resume): {call_left:.0f} s of this call left, "
                     f"the stage needs {secs:.0f} s")
            self.call_end = time.monotonic()  # nothing else starts in this call either
            return None
        st.update(status="running", seconds_allotted=round(secs, 1), steps_planned=steps, compile=compile_,
                  compile_reason=why, rate_estimate=rate, amp=self.amp, init=kw.get("init"), teacher=kw.get("teacher"),
                  ckpt_every=gp.checkpoint_every(rate or 0.0, minimum=SMOKE["log_every"] if a.smoke else 50),
                  seconds=0.0, device=self.device_name)
        if target is not None:
            st["target_steps"] = target
        if (self.work / spec.name).exists():
            shutil.rmtree(self.work / spec.name)  # a stage that never checkpointed starts again from nothing
        self.log(f"{spec.name}: {secs:.0f} s, {steps} steps planned"
                 + (f" (stopping at {target}, as its student)" if target and target < steps else "")
                 + f" at {rate or 0:.2f} steps/s; {why}"
                 + (f"; init {Path(kw['init']).name}" if "init" in kw else "")
                 + (f"; teacher {Path(kw['teacher']).name}" if "teacher" in kw else ""))
        return secs

    def _twin_allotment(self, spec: gp.StageSpec, st: Dict[str, Any], left: float,
                        est: Dict[str, Optional[float]]) -> Optional[Tuple[float, int, int]]:
        """A twin's (seconds, planned steps, target steps): its KD student's schedule, stopped where the student
        stopped; None (skipped) when the student did not train."""
        kd = self._stage_record(self.specs[spec.twin_of])
        if kd["status"] not in ("done", "stopped") or not kd.get("steps"):
            self._skip(st, f"its KD student {spec.twin_of} did not train")
            return None
        steps, target = int(kd["steps_planned"]), int(kd["steps"])
        # (a shared CPU's rate swings more than a GPU's: --smoke gives twins four times the estimate)
        need = gp.twin_seconds(target, est["eager"] or 0.0, TWIN_SLACK / 2 if self.args.smoke else TWIN_SLACK)
        secs = 0.0 if self.out_of_time else (min(need, left) if need > 0 else left)
        return secs, steps, target

    def _share_seconds(self, spec: gp.StageSpec, later: List[gp.StageSpec], left: float,
                       est: Dict[str, Optional[float]]) -> float:
        """A stage's share of the seconds left; a KD student's share pays for its twin's same steps."""
        if self.out_of_time:
            return 0.0
        shared = [s.name for s in later if s.name in self.shares]
        secs = gp.stage_seconds(left, self.shares, spec.name, shared)
        twin = next((s for s in later if s.twin_of == spec.name), None)
        if twin is not None and secs > 0:
            twin_rate = gp.stage_rates(self.summary, twin, self.device_name)["eager"]
            secs, _ = gp.pair_split(secs, est["eager"] or 0.0, twin_rate or 0.0)
        return secs

    # -- training a stage
    def _train_stage(self, spec: gp.StageSpec, st: Dict[str, Any], kw: Dict[str, Any], limit: float,
                     seconds_left: float, reserve: float, resuming: bool) -> Optional[Tuple[Any, Any]]:
        """Train the stage for at most `limit` seconds: (result, config), or None when it failed (recorded)."""
        run = self.work / spec.name
        target = st.get("target_steps")
        stop_after = None
        if target is not None and target < st["steps_planned"]:
            stop_after = max(1, target - (int(st.get("steps", 0)) if resuming else 0))  # counts this invocation's steps
        cfg = self.config(spec.arch, spec.scale, run, blocks=spec.blocks, role=spec.role, steps=st["steps_planned"],
                          time_limit=limit, compile=st["compile"], ckpt_every=st["ckpt_every"], resume=resuming,
                          stop_after=stop_after, **kw)
        t = time.monotonic()
        try:
            result = self._train_or_eager(cfg, st, run, seconds_left, reserve)
        except (SrkdError, RuntimeError) as e:  # RuntimeError: e.g. CUDA out of memory; the next stages may still run
            st.update(status="failed", error=f"{type(e).__name__}: {e}", seconds=round(st.get("seconds", 0.0) + time.monotonic() - t, 1))
            self.log(f"{spec.name}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            self.log(traceback.format_exc(), file_only=True)
            self.checkpoint()
            return None
        st["seconds"] = round(st.get("seconds", 0.0) + time.monotonic() - t, 1)
        return result, cfg

    def _train_or_eager(self, cfg: Any, st: Dict[str, Any], run: Path, seconds_left: float, reserve: float) -> Any:
        """train(cfg); a compiled stage whose compilation fails before its first checkpoint runs again eager."""
        from srkd_cli.training import train

        try:
            return train(cfg)
        except RuntimeError as e:  # torch.compile's failures are RuntimeErrors
            if not cfg.compile or (run / "state.pt").is_file():
                raise
            self.log(f"{st['name']}: compiled, it failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                     "running it eager")
            shutil.rmtree(run, ignore_errors=True)
            st.update(compile=False, compile_reason=f"eager: compiling failed ({type(e).__name__})")
            cfg.compile = False
            cfg.time_limit = max(1.0, min(seconds_left, self.call_end - time.monotonic() - reserve))
            return train(cfg)

    def _settle(self, st: Dict[str, Any], result: Any, cfg: Any, limit: float, seconds_left: float) -> Path:
        """Record how the training ended (done, stopped, or paused for --resume) and export its weights."""
        name, run = st["name"], self.work / st["name"]
        records = read_log(run / "log.jsonl")
        rate, _ = gp.steady_rate(records)
        st.update(steps=result.step, steps_per_s=rate, last_loss=result.last_loss, log=thin(records))
        target = st.get("target_steps")
        if result.completed and result.final is not None:
            st["status"] = "done"
            st.pop("stop_reason", None)  # from an earlier, interrupted invocation
            weights, part = self.export(result.final, name)
        else:
            if target is not None and result.step >= target:
                st["status"] = "done"  # a twin stopped where its student stopped
                st["stop_reason"] = f"at step {target}, where its KD student stopped"
            else:
                st["status"], st["stop_reason"] = self._stop_status(result, limit, seconds_left)
            weights, part = self.export(self._save_partial(result, cfg, run), name)
        st["weights"], st["returned_in"] = weights.name, part
        self.log(f"{name}: {st['status']} after {result.step}/{st['steps_planned']} steps in {st['seconds']:.0f} s "
                 f"({rate or 0:.2f} steps/s), loss {result.last_loss or float('nan'):.5f}"
                 + (f"; weights in {part}" if part else ""))
        return weights

    def _stop_status(self, result: Any, limit: float, seconds_left: float) -> Tuple[str, str]:
        """(status, reason) of a stage stopped before its planned steps: paused (a signal, or this call's time
        limit: --resume continues it from state.pt) or stopped (its own time ran out: the EMA weights so far are
        the result)."""
        reason = result.stop_reason or "stopped"
        by_call = reason.startswith("time limit") and limit < seconds_left
        if reason in ("interrupted", "terminated"):
            # the trainer's handler took the signal: end this invocation after the export
            self.stop_signal = signal.SIGINT if reason == "interrupted" else signal.SIGTERM
        if reason in ("interrupted", "terminated") or by_call:
            return "paused", reason
        return "stopped", reason

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


def main(argv: Optional[List[str]] = None) -> int:
    from srkd_cli.errors import SrkdError

    try:
        args = parse_args(argv, description=__doc__)
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