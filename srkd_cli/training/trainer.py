"""The training loop shared by `srkd train` and `srkd distill`.

`train(TrainConfig) -> RunResult` runs a whole job: Adam with a warm-up + cosine (or multistep)
schedule (schedule.py), gradient clipping, --precision (config.py), EMA weights (validated and exported),
validation as PSNR-Y, atomic checkpoints of the full training state, a JSONL log, and
DistributedDataParallel under torchrun.

A run directory holds:
    state.pt            full training state (model, EMA, optimiser, step, RNG and data-stream states)
    log.jsonl           one JSON object per log interval ("train") or validation ("val")
    best.safetensors    EMA weights at the best validation PSNR-Y
    final.safetensors   EMA weights at the end, with provenance metadata

On the GPU nothing in the step waits for the device: losses are summed on the device and read
every `log_every` steps, where a NaN/inf also stops the run (before any checkpoint could store it).
"""

from __future__ import annotations

import json
import math
import shlex
import signal
import sys
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from .. import __version__
from ..archs import ARCHS, SRModel, count_params, get_arch, reparam
from ..checkpoint import save_checkpoint
from ..config import a_or_an
from ..distributed import DistEnv, dist_env, init_process_group, rank_device, shutdown
from ..errors import ConfigError, SrkdError
from ..inference import pick_device
from ..metrics import psnr, to_uint8
from ..runtime.signals import StopFlag
from .data import (PatchSampler, ValImage, check_disjoint, data_fingerprint, held_out, load_held_out, load_hr_store,
                   load_val_set, training_files)
from .config import DEFAULT_ALPHA, RunResult, TrainConfig, TrainingDiverged, check_config, resolve_train_precision
from .progress import TrainProgress, duration
from .schedule import EMA, lr_at
from .state import STATE_FILE, RunState
from .recipes import (AlphaKD, Recipe, WithFeatures, check_pair, get_pairing, init_from_teacher, init_from_weights,
                      make_distill_recipe)
from .teacher_cache import HaloTeacher, TeacherCache, fill_precision, halo_margin, parse_mode, teacher_autocast

LOG_FILE = "log.jsonl"
BEST_FILE = "best.safetensors"
FINAL_FILE = "final.safetensors"
HELD_OUT = "held-out"  # the --val-split slice's name in logs and validation records
ADAM_BETAS = (0.9, 0.99)


@contextmanager
def _naming_option(flag: str, name: str) -> Iterator[None]:
    """An SrkdError about the model `name` begins with the option that gave it (--teacher, --init)."""
    try:
        yield
    except SrkdError as e:
        msg = str(e)
        raise type(e)(f"{flag} {msg}" if msg.startswith(name) else f"{flag} {name}: {msg}") from None


def resolve_device(name: str, env: DistEnv) -> torch.device:
    """The device named on the command line (`auto`: cuda, mps, cpu), one per torchrun rank."""
    return rank_device(env, pick_device(name))



def _logged_step(line: str) -> float:
    """The step of a log line; a torn last line (a crash mid-write) counts as after everything."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class Trainer(RunState):
    """One run. Construction does all the checking and loading; `run()` trains."""

    def __init__(self, cfg: TrainConfig, env: Optional[DistEnv] = None):
        check_config(cfg)
        self.cfg = cfg
        self.env = env or dist_env()
        self.is_main = self.env.is_main
        self.out = Path(cfg.out)
        self.spec = get_arch(cfg.arch)
        self.warnings: List[str] = []
        self._setup_run()
        teacher = self._load_teacher() if cfg.teacher else None
        self._setup_model(teacher)
        self._setup_data()
        self._setup_optimiser()
        self.step = 0
        self.best_psnr: Optional[float] = None
        self.last_val: Optional[float] = None
        self.last_loss: Optional[float] = None
        self._acc: Optional[torch.Tensor] = None
        self._acc_steps = 0
        self._part_names: List[str] = []
        self._last_ckpt_step: Optional[int] = None
        self._resumed = False
        self._earlier_commands: List[str] = []  # of the pieces this run resumed from
        if cfg.resume and (self.out / STATE_FILE).is_file():
            self._load_state()

    # ------------------------------------------------------------------ setup stages

    def _setup_run(self) -> None:
        """Processes, threads, device, the run folder, hyper-parameter defaults, the data folders."""
        cfg = self.cfg
        if cfg.batch % self.env.world_size:
            raise ConfigError(f"--batch {cfg.batch}: must be a multiple of the {self.env.world_size} processes")
        if cfg.threads is not None:
            if cfg.threads < 1:
                raise ConfigError(f"--threads {cfg.threads}: must be at least 1")
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device, self.env)
        defaults = self.spec.train_defaults
        self.patch = cfg.patch or defaults["patch"]
        self.base_lr = cfg.lr or defaults["lr"]
        self.warmup = cfg.warmup if cfg.warmup is not None else min(1000, cfg.steps // 20)
        self._check_run_dir()
        self.fingerprint = data_fingerprint(cfg.data)  # also: every --data folder exists and holds images
        for v in cfg.val:
            if not Path(v).is_dir():
                raise ConfigError(f"--val {v}: no such folder")
        self.teacher_name: Optional[str] = None
        self.teacher_sha256: Optional[str] = None

    def _setup_model(self, teacher) -> None:
        """The student (derived from the teacher where the pairing says so), its start and the recipe."""
        cfg = self.cfg
        self.model_config = self._student_config(teacher)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model: SRModel = self.spec.build(cfg.scale, **self.model_config).to(self.device)
        if teacher is not None:
            if cfg.init_from_teacher:
                if not get_pairing(self.spec.name, teacher.spec.name).shares_weights:
                    raise ConfigError(f"--init-from-teacher: {a_or_an(self.spec.name)} student shares no weights with "
                                      f"{a_or_an(teacher.spec.name)} teacher")
                init_from_teacher(self.model, teacher.model)
            self.recipe: Recipe = make_distill_recipe(
                self.spec.name, self.model, teacher.spec.name, teacher.model,
                DEFAULT_ALPHA if cfg.alpha is None else cfg.alpha, cfg.feat_loss,
                cfg.feat_weight, cfg.out_weight, teacher_only=cfg.teacher_only,
            )
            if cfg.alpha is not None and not isinstance(self.recipe, AlphaKD):
                self.warnings.append(f"--alpha {cfg.alpha:g}: recipe {self.recipe.name} does not use it "
                                     "(only paper 2's, a swinir student of a swinir teacher)")
        else:
            self.recipe = Recipe(cfg.loss)
        self.init_sha256: Optional[str] = None  # a zoo name alone does not say which file it was
        if cfg.init:
            from ..loader import load_model

            with _naming_option("--init", str(cfg.init)):
                start = load_model(cfg.init, device="cpu")
            self.warnings.append(init_from_weights(self.model, start.model, cfg.init))
            self.init_sha256 = start.sha256
        if cfg.reparam:
            if not self.spec.expandable:
                raise ConfigError(f"--reparam: {self.spec.name} cannot be re-parameterised (srkd does it for "
                                  f"{', '.join(n for n, s in ARCHS.items() if s.expandable)})")
            # After --init, so the expanded model starts as the weights it was given.
            reparam.expand(self.model, cfg.reparam)
        self.channels_last = self.spec.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if teacher is not None and teacher.spec.channels_last:
            self.recipe.teacher.to(memory_format=torch.channels_last)
        self.precision = resolve_train_precision(cfg.precision, self.device, self.spec, self.warnings)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # patches have one fixed size

    def _setup_data(self) -> None:
        """HR store, patch stream, teacher cache and validation sets."""
        cfg = self.cfg
        # --teacher-only: the images are the student's inputs (sampled at scale 1, never downscaled)
        in_scale = 1 if cfg.teacher_only else cfg.scale
        mode = parse_mode(cfg.teacher_cache)
        margin = (halo_margin(mode, self.recipe.teacher, getattr(self, "teacher_config", None))
                  if self.recipe.teacher is not None else None)
        hr_side = (self.patch + 2 * (margin or 0)) * in_scale
        self.held_out = held_out(training_files(cfg.data), cfg.val_split)
        self.store = load_hr_store(cfg.data, min_size=hr_side, device=self.device, exclude=self.held_out)
        self.rank_batch = cfg.batch // self.env.world_size
        self.sampler = PatchSampler(self.store, in_scale, self.patch + 2 * (margin or 0), self.rank_batch,
                                    self._stream_seed(self.env.rank))
        self.teacher_cache: Optional[TeacherCache] = None
        teacher_precision = (fill_precision(getattr(cfg, "precision", "auto"), self.device, self.recipe.teacher)
                             if self.recipe.teacher is not None else "fp32")
        if margin is not None:
            self.sampler = self.teacher_cache = HaloTeacher(
                self.recipe.teacher, self.sampler, cfg.scale, in_scale, self.patch, margin,
                self.recipe.teacher_features, self.recipe.needs_teacher_output, teacher_precision)
            mode = "off"
        if mode != "off":
            if self.recipe.teacher is None:
                raise ConfigError("--teacher-cache needs a teacher (srkd distill)")
            self.teacher_cache = TeacherCache(
                self.recipe.teacher, self.store, cfg.scale, self.patch, self.recipe.teacher_features,
                self.recipe.needs_teacher_output, mode, self.fingerprint, input_scale=in_scale,
                dtype=cfg.cache_dtype, precision=teacher_precision)
        self.val_sets: Dict[str, List[ValImage]] = {}
        if self.is_main and cfg.teacher_only:  # scored against the teacher's output (training/teacher_only.py)
            from .teacher_only import teacher_val_set, val_inputs

            if self.held_out:
                self.val_sets[HELD_OUT] = teacher_val_set(self.held_out, self.recipe.teacher)
            for v in cfg.val:
                self.val_sets[Path(v).name] = teacher_val_set(val_inputs(Path(v)), self.recipe.teacher)
        elif self.is_main:
            if self.held_out:
                self.val_sets[HELD_OUT] = load_held_out(self.held_out, cfg.scale)
            for v in cfg.val:
                self.val_sets[Path(v).name] = load_val_set(v, cfg.scale)
        if self.store.skipped:
            self.warnings.append(
                f"skipped {len(self.store.skipped)} training images smaller than {hr_side}x{hr_side} "
                f"(e.g. {self.store.skipped[0].name})"
            )
        overlap = check_disjoint(self.store.files, cfg.val)
        if overlap:
            self.warnings.append(overlap)

    def _setup_optimiser(self) -> None:
        """Adam over the student and the recipe's adapters, EMA, and the wrapped forward (DDP, compile)."""
        fused = self.device.type == "cuda"
        self.adapters = self.recipe.adapters if self.recipe.adapters is not None else torch.nn.ModuleDict()
        trained = [*self.model.parameters(), *self.adapters.parameters()]
        self.optimizer = torch.optim.Adam(trained, lr=self.base_lr, betas=ADAM_BETAS, fused=fused or None)
        self.ema = EMA(self.model, self.cfg.ema) if self.cfg.ema > 0 else None
        net: torch.nn.Module = WithFeatures(self.model, self.recipe.student_features, self.adapters)
        if self.env.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            with warnings.catch_warnings():
                # Newer torch renames broadcast_buffers; the models' only buffers are constants.
                warnings.simplefilter("ignore", FutureWarning)
                net = DDP(net, device_ids=ids, broadcast_buffers=False, gradient_as_bucket_view=True)
        if self.cfg.compile:
            net = torch.compile(net)
        self.net = net

    # ------------------------------------------------------------------ setup helpers

    def _stream_seed(self, rank: int) -> int:
        return (self.cfg.seed * 1_000_003 + rank * 7919 + 1) % (2**63)

    def _check_run_dir(self) -> None:
        state = self.out / STATE_FILE
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out}: exists and is not a folder")
        if state.is_file() and not self.cfg.resume:
            raise ConfigError(f"--out {self.out}: already holds a run ({STATE_FILE}); pass --resume or choose another --out")
        weights = [n for n in (FINAL_FILE, BEST_FILE) if (self.out / n).exists()]
        if weights and not state.is_file() and not self.cfg.overwrite:
            # trained weights with nothing to resume: a fresh run would replace them
            raise ConfigError(f"--out {self.out}: holds trained weights ({', '.join(weights)}) and no {STATE_FILE} to "
                              "resume; pass --overwrite to replace them, or choose another --out")

    def _load_teacher(self):
        from ..loader import load_model
        from ..zoo import get_zoo

        name = str(self.cfg.teacher)
        with _naming_option("--teacher", name):
            ref = get_zoo().identify(name, scale=self.cfg.scale)
        if ref.entry is not None:
            # A zoo entry names its architecture: refuse a pair no recipe covers before downloading.
            check_pair(self.spec.name, get_arch(ref.entry.arch).name)
        with _naming_option("--teacher", name):
            teacher = load_model(ref, scale=self.cfg.scale, device=self.device)
        self.teacher_name = str(teacher.metadata.get("zoo_name") or teacher.path or name)
        self.teacher_config = dict(teacher.config)  # for its receptive field (--teacher-cache halo)
        self.teacher_sha256 = teacher.sha256
        return teacher

    def _student_config(self, teacher) -> Dict[str, Any]:
        """The architecture's defaults, then what the pairing derives from the teacher, then --set/--blocks."""
        derived = get_pairing(self.spec.name, teacher.spec.name).student_config(teacher.config) if teacher else {}
        derived = {k: v for k, v in derived.items() if k in self.spec.defaults}
        return self.spec.config(**{**derived, **self.cfg.arch_config})

    # ------------------------------------------------------------------ logging

    def _open_log(self):
        if not self.is_main:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / LOG_FILE
        if self._resumed and path.exists():
            # Drop what was logged after the checkpoint: those steps are about to be redone.
            kept = [ln for ln in path.read_text().splitlines() if _logged_step(ln) <= self.step]
            path.write_text("".join(k + "\n" for k in kept))
            return open(path, "a")
        return open(path, "w")

    def _write(self, log, record: Dict[str, Any]) -> None:
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()

    # ------------------------------------------------------------------ the loop

    def _train_step(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.base_lr, self.cfg.steps, self.warmup, self.cfg.schedule)
        lr_img, hr = self.sampler.next()
        cached = self.teacher_cache.targets(self.sampler.last_params) if self.teacher_cache else None
        if self.channels_last:
            lr_img = lr_img.contiguous(memory_format=torch.channels_last)
        amp = teacher_autocast(self.device, self.precision)  # the one bf16-autocast switch
        with amp:
            total, parts = self.recipe(self.net, lr_img, hr, cached)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        self.optimizer.step()
        if self.ema:
            self.ema.update(self.model, self.step)
        values = torch.stack([total.detach().float(), *(v.detach().float() for v in parts.values())])
        if not self._part_names:
            self._part_names = ["loss", *parts]
        self._acc = values if self._acc is None else self._acc + values
        self._acc_steps += 1
        self.step += 1

    def _flush_losses(self) -> Optional[Dict[str, float]]:
        """Mean loss parts since the last flush (averaged over ranks); raises on NaN/inf."""
        if self._acc is None or self._acc_steps == 0:
            return None
        acc = self._acc
        if self.env.enabled:
            acc = acc.clone()
            dist.all_reduce(acc)
            acc /= self.env.world_size
        values = (acc / self._acc_steps).tolist()
        first = self.step - self._acc_steps + 1
        self._acc, self._acc_steps = None, 0
        means = dict(zip(self._part_names, values))
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if bad:
            if self._last_ckpt_step:
                kept = f"the last good checkpoint is {self.out / STATE_FILE} (step {self._last_ckpt_step})"
            else:
                kept = "no checkpoint had been written yet"
            raise TrainingDiverged(
                f"the loss became {next(iter(bad.values()))} between steps {first} and {self.step}; {kept}; "
                "lower --lr or --clip and --resume"
            )
        self.last_loss = means["loss"]
        return means

    def _agree(self, flag: bool) -> bool:
        """True on every rank when any rank says so (all ranks must stop at the same step)."""
        if not self.env.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    @torch.no_grad()
    def validate(self) -> Optional[float]:
        """The score that picks best.safetensors: the held-out slice's mean PSNR-Y (border = scale)
        with the exported weights under --val-split, else the mean over the --val sets. Every set's
        score is kept in `_val_detail`; under --val-split the --val sets are monitors only."""
        if not self.val_sets:
            return None
        model = self.export_model()
        model.eval()
        per_set = {}
        for name, images in self.val_sets.items():
            scores = []
            for img in images:
                out = model(img.lr.to(self.device))
                scores.append(psnr(to_uint8(out.float()), img.hr, crop_border=self.cfg.scale, y_only=True))
            per_set[name] = float(np.mean(scores))
        self.last_val = per_set[HELD_OUT] if HELD_OUT in per_set else float(np.mean(list(per_set.values())))
        self._val_detail = per_set
        return self.last_val

    def export_model(self) -> SRModel:
        """The weights validated and shipped: EMA (or raw), collapsed to the plain architecture under --reparam."""
        model = self.ema.model if self.ema else self.model
        return reparam.collapse(model) if self.cfg.reparam else model

    def _commands(self) -> List[str]:
        """Every command that trained this run, oldest first: a resumed run is reproduced by all of them."""
        now = self.cfg.command or shlex.join(sys.argv)
        earlier = self._earlier_commands
        return earlier if earlier and earlier[-1] == now else [*earlier, now]

    def provenance(self) -> Dict[str, Any]:
        cfg = self.cfg
        commands = self._commands()
        return {
            "srkd_version": __version__,
            "command": commands[-1],
            "commands": commands,
            "data": [str(d) for d in cfg.data],
            "data_fingerprint": self.fingerprint,
            "train_images": len(self.store),
            "steps": self.step,
            "batch": cfg.batch,
            "patch": self.patch,
            "lr": self.base_lr,
            "schedule": cfg.schedule,
            "warmup": self.warmup,
            "ema": cfg.ema,
            "seed": cfg.seed,
            "world_size": self.env.world_size,
            "device": str(self.device),
            "best_val_psnr_y": self.best_psnr,
            "val": [str(v) for v in cfg.val],
            "val_split": [f.name for f in self.held_out],  # picks best.safetensors when present
            "precision": self.precision,
            "teacher": self.teacher_name,
            "init_from_teacher": cfg.init_from_teacher,
            "init": cfg.init,
            "init_sha256": self.init_sha256,
            "teacher_sha256": self.teacher_sha256,
            "teacher_cache": cfg.teacher_cache,
            "cache_dtype": self.teacher_cache.dtype if isinstance(getattr(self, "teacher_cache", None), TeacherCache) else None,
            "reparam": reparam.describe(cfg.reparam) if cfg.reparam else None,
            **self.recipe.describe(),
        }

    def _export(self, name: str) -> Path:
        return save_checkpoint(self.out / name, self.export_model(), self.spec.name, self.model_config, self.provenance())

    def run(self) -> RunResult:
        cfg = self.cfg
        if self._resumed and self.step >= cfg.steps and (self.out / FINAL_FILE).is_file():
            return self._already_complete()
        if cfg.overwrite and not self._resumed and self.is_main:
            for name in (FINAL_FILE, BEST_FILE):  # a fresh run: weights of the one it replaces must not outlive it
                (self.out / name).unlink(missing_ok=True)
        start_step, t0 = self.step, time.perf_counter()
        stop_reason: Optional[str] = None
        with ExitStack() as stack:
            stopper = stack.enter_context(StopFlag())
            log = self._open_log()
            if log is not None:
                stack.callback(log.close)
            progress = stack.enter_context(TrainProgress(self, enabled=self.is_main and not cfg.quiet))
            for w in self.warnings:
                progress.message(f"warning: {w}")
            if self.is_main and self.step == 0:
                n = count_params(self.export_model())
                size = f"{n:,} parameters" + (f" ({count_params(self.model):,} while trained, --reparam {cfg.reparam})"
                                             if cfg.reparam else "")
                progress.message(
                    f"{self.spec.name} x{cfg.scale}: {size}, "
                    f"{len(self.store)} training images, recipe {self.recipe.name}, device {self.device}"
                )
            if self.teacher_cache is not None:
                stop_reason = self._fill_cache(progress, stopper, start_step, t0)
            if stop_reason is None and self.step < cfg.steps:
                stop_reason = self._stop_reason(stopper, start_step, t0)  # --time-limit 0: set up, then stop
            mark_t, mark_step, paused = time.perf_counter(), self.step, 0.0
            while stop_reason is None and self.step < cfg.steps:
                self._train_step()
                step = self.step
                last = step == cfg.steps
                if step == start_step + 1 and not (step % cfg.log_every == 0 or last):
                    # The first step of an invocation pays for start-up (kernel set-up, first reads of the
                    # data and the teacher cache): rates count from after it, fresh or resumed alike.
                    mark_t, mark_step = time.perf_counter(), step
                if step % cfg.log_every == 0 or last:
                    means = self._flush_losses()  # the one host sync of the interval
                    now = time.perf_counter()
                    rate = (step - mark_step) / max(1e-9, now - mark_t - paused)
                    timed = step - mark_step
                    mark_t, mark_step, paused = now, step, 0.0
                    if means is not None:
                        record = {"event": "train", "step": step, **means, "lr": self.optimizer.param_groups[0]["lr"],
                                  "steps_per_s": rate, "samples_per_s": rate * cfg.batch, "timed_steps": timed}
                        self._write(log, record)
                        progress.update(step, loss=means["loss"], rate=rate)
                    # Signals and limits are looked at here, so that all ranks stop at the same step.
                    stop_reason = self._stop_reason(stopper, start_step, t0)
                else:
                    progress.update(step)
                    # One process needs no agreement: signals and --time-limit count at every step.
                    if not self.env.enabled and (stopper.signal is not None or self._over_time(t0)):
                        stop_reason = self._stop_reason(stopper, start_step, t0)
                if cfg.stop_after and step - start_step >= cfg.stop_after and not last and stop_reason is None:
                    stop_reason = f"--stop-after {cfg.stop_after}"
                t_pause = time.perf_counter()
                if self.is_main and ((cfg.val_every and step % cfg.val_every == 0) or last):
                    score = self.validate()
                    if score is not None:
                        detail = getattr(self, "_val_detail", {})
                        self._write(log, {"event": "val", "step": step, "psnr_y": score, "sets": detail})
                        if self.best_psnr is None or score > self.best_psnr:
                            self.best_psnr = score
                            self._export(BEST_FILE)
                        progress.update(step, val=score)
                if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or last or stop_reason:
                    self._flush_if_pending()
                    self.save_state()
                paused += time.perf_counter() - t_pause
                if stop_reason:
                    break
            completed = self.step >= cfg.steps
            if completed:
                stop_reason = None  # a limit or signal that came with the last step stopped nothing
            final = self._export(FINAL_FILE) if completed and self.is_main else None
            best = self.out / BEST_FILE if self.is_main and (self.out / BEST_FILE).is_file() else None
            if stop_reason:
                progress.message(f"stopped at step {self.step} ({stop_reason}); continue with --resume")
        return RunResult(self.out, self.step, completed, final, best, self.best_psnr, self.last_loss,
                         self.export_model(), self.recipe.teacher, stop_reason, list(self.warnings),
                         self.spec.name, dict(self.model_config), self.provenance())

    def _already_complete(self) -> RunResult:
        """--resume of a run that has reached --steps and exported its weights: one line, nothing written."""
        TrainProgress(self, enabled=self.is_main and not self.cfg.quiet).message(
            f"{self.out}: the run is complete (step {self.step}, --steps {self.cfg.steps}); nothing to do "
            "(a larger --steps trains it further)")
        final, best = self.out / FINAL_FILE, self.out / BEST_FILE
        return RunResult(self.out, self.step, True, final if self.is_main else None,
                         best if self.is_main and best.is_file() else None, self.best_psnr, None,
                         self.export_model(), self.recipe.teacher, None, list(self.warnings),
                         self.spec.name, dict(self.model_config), self.provenance(), already_complete=True)

    def _fill_cache(self, progress: "TrainProgress", stopper: StopFlag, start_step: int, t0: float) -> Optional[str]:
        """Fill the teacher cache before the first step; a signal or --time-limit stops it between
        entries (the reason is returned; a folder keeps the entries made). A line at every tenth and
        at least every 30 s, with the ETA."""
        cache = self.teacher_cache
        assert cache is not None
        if self.is_main:
            progress.message(cache.describe())
            if not isinstance(cache, HaloTeacher):
                progress.message(self._cache_or_halo(cache))
        cache.on_warning = lambda text: progress.message(f"warning: {text}")
        shown, last = [0], [time.perf_counter()]

        def report(p) -> None:
            now = time.perf_counter()
            if self.is_main and (p.done * 10 // p.total > shown[0] or p.done in (1, p.total) or now - last[0] >= 30):
                shown[0], last[0] = p.done * 10 // p.total, now
                eta = f", about {duration(p.eta)} left" if p.eta is not None and p.done < p.total else ""
                progress.message(f"teacher cache: {p.done}/{p.total} entries ({p.made} computed), "
                                 f"{duration(p.elapsed)}{eta}")

        def should_stop() -> bool:
            over = self.cfg.time_limit is not None and time.perf_counter() - t0 >= self.cfg.time_limit
            return stopper.signal is not None or over

        complete = cache.fill(report, should_stop)
        if not self._agree(not complete):  # every rank stops at the same place
            return None
        reason = self._stop_reason(stopper, start_step, t0) or "stopped"
        kept = f"; the {cache.made} entries made are kept in {cache.folder}" if cache.folder is not None else ""
        progress.message(f"teacher cache: stopped while filling ({reason}){kept}")
        return reason

    def _cache_or_halo(self, cache: TeacherCache) -> str:
        """The numbers that choose between the cache and halo mode: the pixels the teacher runs on
        (its cost per pixel is the same either way; docs/training.md, "The teacher cache at user scale")."""
        fill = sum(h // cache.input_scale * (w // cache.input_scale) for h, w in self.store.sizes) * 8
        r = halo_margin("halo", cache.teacher, getattr(self, "teacher_config", None)) or 0
        halo = (self.cfg.steps - self.step) * self.rank_batch * (self.patch + 2 * r) ** 2
        verdict = ("; halo is cheaper for this run (--teacher-cache halo)" if halo < fill
                   else "; the cache is cheaper")
        return (f"teacher cache: the fill runs the teacher on {fill / 1e6:.3g} M pixels once; per patch "
                f"(--teacher-cache halo, margin {r}) it would run on {halo / 1e6:.3g} M over the steps left{verdict}")

    def _flush_if_pending(self) -> None:
        """Never checkpoint weights that a NaN may have reached: check the pending losses first."""
        if self._acc is not None and self._acc_steps:
            acc = self._acc
            if self.env.enabled:
                acc = acc.clone()
                dist.all_reduce(acc)
            if not bool(torch.isfinite(acc).all()):
                self._flush_losses()

    def _over_time(self, t0: float) -> bool:
        return self.cfg.time_limit is not None and time.perf_counter() - t0 >= self.cfg.time_limit

    def _stop_reason(self, stopper: StopFlag, start_step: int, t0: float) -> Optional[str]:
        over_time = self._over_time(t0)
        if self._agree(stopper.signal is not None):
            return "interrupted" if stopper.signal in (None, signal.SIGINT) else "terminated"
        if self._agree(over_time):
            return f"time limit {self.cfg.time_limit:g}s"
        return None


@contextmanager
def _distributed(env: DistEnv, device_name: str) -> Iterator[None]:
    created = False
    if env.enabled and not dist.is_initialized():
        dev = torch.device("cuda" if device_name == "auto" and torch.cuda.is_available() else
                           ("cpu" if device_name == "auto" else device_name))
        init_process_group(env, dev)
        created = True
    try:
        yield
    finally:
        if created:
            shutdown()


def train(cfg: TrainConfig) -> RunResult:
    """Run (or --resume) one training or distillation job; see TrainConfig for the options."""
    env = dist_env()
    with _distributed(env, cfg.device):
        return Trainer(cfg, env).run()


__all__ = ["RunResult", "TrainConfig", "Trainer", "TrainingDiverged", "lr_at", "train"]
