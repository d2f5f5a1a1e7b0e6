"""The training loop shared by `srkd train` and `srkd distill`.

`train(TrainConfig) -> RunResult` runs a whole job: Adam with a warm-up + cosine (or multistep)
schedule, gradient clipping, bf16 autocast on CUDA, EMA weights (validated and exported),
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

import copy
import json
import math
import shlex
import signal
import sys
import threading
import time
import warnings
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from .. import __version__
from ..archs import ARCHS, SRModel, count_params, get_arch, reparam
from ..atomic import atomic_write
from ..checkpoint import _why_unreadable, save_checkpoint
from ..config import a_or_an, check_scale
from ..distributed import DistEnv, dist_env, gather_objects, init_process_group, rank_device, shutdown
from ..errors import ConfigError, SrkdError
from ..inference import pick_device
from ..metrics import psnr, to_uint8
from ..runtime.cpu import cpu_bf16_units
from .data import (PatchSampler, ValImage, check_disjoint, data_fingerprint, held_out, load_held_out, load_hr_store,
                   load_val_set, training_files)
from .recipes import (AlphaKD, Recipe, WithFeatures, check_pair, get_pairing, init_from_teacher, init_from_weights,
                      make_distill_recipe)
from .teacher_cache import DTYPES as CACHE_DTYPES
from .teacher_cache import HaloTeacher, TeacherCache, fill_precision, halo_margin, parse_mode

STATE_FILE = "state.pt"
LOG_FILE = "log.jsonl"
BEST_FILE = "best.safetensors"
FINAL_FILE = "final.safetensors"
SCHEDULES = ("cosine", "multistep")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
HELD_OUT = "held-out"  # the --val-split slice's name in logs and validation records
MULTISTEP_MILESTONES = (0.5, 0.8, 0.9, 0.95)  # fractions of the run; SwinIR's 250k/400k/450k/475k of 500k
ADAM_BETAS = (0.9, 0.99)
DEFAULT_ALPHA = 0.75  # paper 2's


class TrainingDiverged(SrkdError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Everything a run needs; `None` means "the architecture's default"."""

    arch: str
    scale: int
    data: List[Path]
    out: Path
    val: List[Path] = field(default_factory=list)
    val_split: int = 0  # training images held out (never cut into patches) to validate and pick best on
    arch_config: Dict[str, Any] = field(default_factory=dict)  # overrides, e.g. {"blocks": 2}
    steps: int = 100_000
    batch: int = 16  # global: split across DDP ranks
    patch: Optional[int] = None  # LR patch side
    lr: Optional[float] = None
    warmup: Optional[int] = None
    schedule: str = "cosine"
    ema: float = 0.999  # 0 disables EMA
    clip: float = 1.0  # 0 disables clipping
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False  # replace the weights in an --out folder that has no state.pt to resume
    ckpt_every: int = 1000
    val_every: int = 1000  # 0: validate only at the end
    log_every: int = 50
    stop_after: Optional[int] = None  # checkpoint and stop after this many steps of this invocation
    time_limit: Optional[float] = None  # seconds; checkpoint and stop when reached
    compile: bool = False
    precision: str = "auto"  # auto, fp32 or bf16 (autocast; weights, optimizer, EMA and losses stay fp32)
    threads: Optional[int] = None  # CPU intra-op threads (torch.set_num_threads); None leaves torch's default
    quiet: bool = False
    # distillation
    teacher: Optional[str] = None  # zoo name or weights file
    init_from_teacher: bool = False
    init: Optional[str] = None  # weights (file or zoo name) to start from
    alpha: Optional[float] = None  # paper 2's alpha; None: DEFAULT_ALPHA (given to another recipe: a warning)
    feat_loss: str = "l1"
    feat_weight: float = 0.1
    out_weight: Optional[float] = None  # weight of L1(student, teacher output); None: 0, or 1 without feature pairs
    teacher_cache: str = "off"  # off, ram, halo[:R] or a folder (training/teacher_cache.py)
    cache_dtype: str = "fp16"  # how the cache stores the teacher's image: fp16, uint8 or fp32
    teacher_only: bool = False  # no HR: --data images are the inputs, the teacher's output the target
    reparam: int = 0  # expansion width of training-time re-parameterisation (archs/reparam.py); 0: off
    command: Optional[str] = None  # recorded in provenance


@dataclass
class RunResult:
    run_dir: Path
    step: int
    completed: bool  # False when stopped early (signal, --stop-after, time limit)
    final: Optional[Path]
    best: Optional[Path]
    best_psnr: Optional[float]
    last_loss: Optional[float]
    model: SRModel  # the exported weights (EMA, or raw when EMA is off)
    teacher: Optional[SRModel] = None
    stop_reason: Optional[str] = None
    warnings: List[str] = field(default_factory=list)  # what the run printed as warnings
    # What final.safetensors would carry, at the step it stopped: for saving `model` elsewhere.
    arch: str = ""
    model_config: Dict[str, Any] = field(default_factory=dict)
    provenance: Dict[str, Any] = field(default_factory=dict)
    already_complete: bool = False  # --resume found the run complete: it said so and wrote nothing


def lr_at(step: int, base: float, total: int, warmup: int, schedule: str) -> float:
    """Learning rate for 0-based `step`: linear warm-up to `base`, then cosine to 0 or halvings."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    halvings = sum(step >= int(f * total) for f in MULTISTEP_MILESTONES)
    return base * 0.5**halvings


def resolve_train_precision(asked: str, device: torch.device, spec: Any, warnings: List[str]) -> str:
    """"fp32" or "bf16" (autocast) for `--precision asked` on `device`.

    auto: bf16 on CUDA (as always); on a CPU, bf16 where it has bf16 matrix units (AMX or
    AVX512-BF16) and the architecture measured faster with it (`ArchSpec.cpu_bf16_train`).
    """
    if device.type == "cuda":
        return "fp32" if asked == "fp32" else "bf16"
    if device.type != "cpu":
        if asked == "bf16":
            raise ConfigError(f"--precision bf16: not supported on {device.type}; use fp32")
        return "fp32"
    units = cpu_bf16_units()
    if asked == "auto":
        return "bf16" if units and spec.cpu_bf16_train else "fp32"
    if asked == "bf16" and not units:
        warnings.append("--precision bf16: this CPU has no bf16 matrix units (AMX, AVX512-BF16); "
                        "bf16 is emulated and slower than fp32")
    return asked


def resolve_device(name: str, env: DistEnv) -> torch.device:
    """The device named on the command line (`auto`: cuda, mps, cpu), one per torchrun rank."""
    return rank_device(env, pick_device(name))


class EMA:
    """Exponential moving average of the weights; the decay ramps up so early validation is meaningful."""

    def __init__(self, model: SRModel, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: SRModel, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        ema_p = [p for p in self.model.parameters()]
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - d)


class _Stopper:
    """SIGINT/SIGTERM set a flag the loop reads; the old handlers come back afterwards."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "_Stopper":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the checkpoint
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _logged_step(line: str) -> float:
    """The step of a log line; a torn last line (a crash mid-write) counts as after everything."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _check_config(cfg: TrainConfig) -> None:
    check_scale(cfg.scale)
    positive = {"--steps": cfg.steps, "--batch": cfg.batch, "--log-every": cfg.log_every}
    for name, v in positive.items():
        if v < 1:
            raise ConfigError(f"{name} {v}: must be at least 1")
    if cfg.patch is not None and cfg.patch < 4:
        raise ConfigError(f"--patch {cfg.patch}: must be at least 4 (LR pixels)")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ConfigError(f"--lr {cfg.lr}: must be positive")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule {cfg.schedule}: use one of {', '.join(SCHEDULES)}")
    if not 0.0 <= cfg.ema < 1.0:
        raise ConfigError(f"--ema {cfg.ema}: must lie in [0, 1) (0 turns EMA off)")
    for name, v in {"--clip": cfg.clip, "--ckpt-every": cfg.ckpt_every, "--val-every": cfg.val_every}.items():
        if v < 0:
            raise ConfigError(f"{name} {v}: must be >= 0 (0 turns it off)")
    if cfg.warmup is not None and cfg.warmup < 0:
        raise ConfigError(f"--warmup {cfg.warmup}: must be >= 0")
    if cfg.time_limit is not None and not cfg.time_limit >= 0:
        raise ConfigError(f"--time-limit {cfg.time_limit:g}: must be >= 0 seconds (0: stop once set up)")
    if cfg.alpha is not None and not 0.0 <= cfg.alpha <= 1.0:
        raise ConfigError(f"--alpha {cfg.alpha:g}: must lie in [0, 1]")
    if not cfg.data:
        raise ConfigError("--data: give at least one folder of training images")
    if cfg.init_from_teacher and not cfg.teacher:
        raise ConfigError("--init-from-teacher needs --teacher")
    if cfg.teacher_only and not cfg.teacher:
        raise ConfigError("--teacher-only needs --teacher (srkd distill)")
    if cfg.cache_dtype not in CACHE_DTYPES:
        raise ConfigError(f"--cache-dtype {cfg.cache_dtype}: use one of {', '.join(CACHE_DTYPES)}")
    if cfg.reparam < 0:
        raise ConfigError(f"--reparam {cfg.reparam}: the expansion width must be >= 1 (0 turns it off)")
    if cfg.precision not in TRAIN_PRECISIONS:
        raise ConfigError(f"--precision {cfg.precision}: use one of {', '.join(TRAIN_PRECISIONS)}")
    if cfg.val_split < 0:
        raise ConfigError(f"--val-split {cfg.val_split}: must be >= 0 (0 holds no training image out)")


class Trainer:
    """One run. Construction does all the checking and loading; `run()` trains."""

    def __init__(self, cfg: TrainConfig, env: Optional[DistEnv] = None):
        _check_config(cfg)
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
            self.recipe = Recipe()
        self.init_sha256: Optional[str] = None  # a zoo name alone does not say which file it was
        if cfg.init:
            from ..loader import load_model
            from ..zoo import sha256_file

            try:
                start = load_model(cfg.init, device="cpu")
            except SrkdError as e:  # name the option, as --teacher does
                msg = str(e)
                raise type(e)(f"--init {msg}" if msg.startswith(str(cfg.init)) else f"--init {cfg.init}: {msg}") from None
            self.warnings.append(init_from_weights(self.model, start.model, cfg.init))
            self.init_sha256 = sha256_file(start.path) if start.path is not None else None
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

        name = str(self.cfg.teacher)
        if not Path(name).expanduser().is_file():
            # A zoo entry names its architecture: refuse a pair no recipe covers before downloading.
            from ..zoo import get_zoo

            try:
                arch = get_zoo().get(name, scale=self.cfg.scale).arch
            except SrkdError:
                arch = None
            if arch is not None:
                check_pair(self.spec.name, get_arch(arch).name)
        try:
            teacher = load_model(model=name, scale=self.cfg.scale, device=self.device)
        except SrkdError as e:
            msg = str(e)
            raise type(e)(f"--teacher {msg}" if msg.startswith(name) else f"--teacher {name}: {msg}") from None
        self.teacher_name = str(teacher.metadata.get("zoo_name") or teacher.path or name)
        self.teacher_config = dict(teacher.config)  # for its receptive field (--teacher-cache halo)
        if teacher.path is not None:
            from ..zoo import sha256_file

            self.teacher_sha256 = sha256_file(teacher.path)
        return teacher

    def _student_config(self, teacher) -> Dict[str, Any]:
        """The architecture's defaults, then what the pairing derives from the teacher, then --set/--blocks."""
        derived = get_pairing(self.spec.name, teacher.spec.name).student_config(teacher.config) if teacher else {}
        derived = {k: v for k, v in derived.items() if k in self.spec.defaults}
        return self.spec.config(**{**derived, **self.cfg.arch_config})

    # ------------------------------------------------------------------ state

    def _state(self) -> Dict[str, Any]:
        streams = gather_objects(self.sampler.state_dict()["generator"], self.env)
        return {
            "format": "srkd-train-state/1",
            "step": self.step,
            "arch": self.spec.name,
            "scale": self.cfg.scale,
            "model_config": self.model_config,
            "reparam": self.cfg.reparam,
            "recipe": self.recipe.describe(),
            "commands": self._commands(),
            "init_sha256": self.init_sha256,
            "model": self.model.state_dict(),
            "adapters": self.adapters.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"schedule": self.cfg.schedule, "warmup": self.warmup, "steps": self.cfg.steps, "base_lr": self.base_lr},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "streams": streams,
            },
            "best_psnr": self.best_psnr,
            "last_val": self.last_val,
            "acc": None if self._acc is None else self._acc.detach().cpu(),
            "acc_steps": self._acc_steps,
            "part_names": self._part_names,
            "data_fingerprint": self.fingerprint,
            "world_size": self.env.world_size,
            "val_split": [f.name for f in self.held_out],
            "precision": self.precision,
        }

    def save_state(self) -> None:
        state = self._state()  # every rank takes part in gathering the data streams
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            _atomic_save(state, self.out / STATE_FILE)
        self._last_ckpt_step = self.step

    def _load_state(self) -> None:
        path = self.out / STATE_FILE
        try:
            st = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable state is the same user problem
            # torch's advice to load with weights_only=False is what must never be done with a file one did not write
            raise ConfigError(f"{path}: cannot read the training state: {_why_unreadable(e)}") from None
        for key, mine in (("arch", self.spec.name), ("scale", self.cfg.scale), ("model_config", self.model_config)):
            if st.get(key) != mine:
                raise ConfigError(f"--resume: {path} is a run of {key}={st.get(key)}, this command asks for {mine}")
        if int(st.get("reparam", 0)) != self.cfg.reparam:
            raise ConfigError(f"--resume: {path} was trained with --reparam {st.get('reparam', 0)}, "
                              f"this command asks for --reparam {self.cfg.reparam}")
        if st.get("recipe", {}).get("recipe") != self.recipe.name:
            raise ConfigError(f"--resume: {path} was trained with recipe {st.get('recipe')}, not {self.recipe.name}")
        was_only = bool(st.get("recipe", {}).get("teacher_only"))
        if was_only != bool(self.cfg.teacher_only):
            raise ConfigError(f"--resume: {path} was trained {'with' if was_only else 'without'} --teacher-only; "
                              "give the same (the inputs and the targets differ)")
        self.model.load_state_dict(st["model"])
        if st.get("adapters"):
            self.adapters.load_state_dict(st["adapters"])
        if self.ema and st["ema"] is not None:
            self.ema.model.load_state_dict(st["ema"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.step = int(st["step"])
        self.best_psnr, self.last_val = st["best_psnr"], st["last_val"]
        torch.set_rng_state(st["rng"]["torch"])
        if self.device.type == "cuda" and st["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(st["rng"]["cuda"], self.device)
        streams = st["rng"]["streams"]
        if len(streams) == self.env.world_size:
            self.sampler.generator.set_state(streams[self.env.rank])
        else:
            self.warnings.append(
                f"--resume: the state was written by {len(streams)} processes, this run has {self.env.world_size}: "
                "the data streams restart from new seeds (not a bit-exact resume)"
            )
            self.sampler.generator.manual_seed(self._stream_seed(self.env.rank) + self.step)
        if st["acc"] is not None:
            self._acc = st["acc"].to(self.device)
        self._acc_steps, self._part_names = st["acc_steps"], list(st["part_names"])
        if st.get("data_fingerprint") != self.fingerprint:
            self.warnings.append("--resume: the training data changed since the run started")
        held = [f.name for f in self.held_out]
        if st.get("val_split", []) != held:
            raise ConfigError(f"--resume: {path} held out {len(st.get('val_split', []))} training images "
                              f"(--val-split), this command holds out {len(held)}: they train on different images")
        if st.get("precision", "fp32" if self.device.type == "cpu" else "bf16") != self.precision:
            self.warnings.append(f"--resume: the run trained in {st.get('precision', 'fp32')} and goes on in "
                                 f"{self.precision} (not a bit-exact resume)")
        self._earlier_commands = [str(c) for c in st.get("commands", [])]
        started = st.get("init_sha256")
        if started:
            if self.init_sha256 and self.init_sha256 != started:
                self.warnings.append(f"--resume: --init {self.cfg.init} is not the file this run started from; "
                                     "the weights come from the state, the provenance names the original")
            self.init_sha256 = started
        self._last_ckpt_step = self.step
        self._resumed = True

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
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()
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
            stopper = stack.enter_context(_Stopper())
            log = self._open_log()
            if log is not None:
                stack.callback(log.close)
            progress = stack.enter_context(_Progress(self, enabled=self.is_main and not cfg.quiet))
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
        _Progress(self, enabled=self.is_main and not self.cfg.quiet).message(
            f"{self.out}: the run is complete (step {self.step}, --steps {self.cfg.steps}); nothing to do "
            "(a larger --steps trains it further)")
        final, best = self.out / FINAL_FILE, self.out / BEST_FILE
        return RunResult(self.out, self.step, True, final if self.is_main else None,
                         best if self.is_main and best.is_file() else None, self.best_psnr, None,
                         self.export_model(), self.recipe.teacher, None, list(self.warnings),
                         self.spec.name, dict(self.model_config), self.provenance(), already_complete=True)

    def _fill_cache(self, progress: "_Progress", stopper: _Stopper, start_step: int, t0: float) -> Optional[str]:
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
                eta = f", about {_duration(p.eta)} left" if p.eta is not None and p.done < p.total else ""
                progress.message(f"teacher cache: {p.done}/{p.total} entries ({p.made} computed), "
                                 f"{_duration(p.elapsed)}{eta}")

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

    def _stop_reason(self, stopper: _Stopper, start_step: int, t0: float) -> Optional[str]:
        over_time = self._over_time(t0)
        if self._agree(stopper.signal is not None):
            return "interrupted" if stopper.signal in (None, signal.SIGINT) else "terminated"
        if self._agree(over_time):
            return f"time limit {self.cfg.time_limit:g}s"
        return None


def _duration(seconds: float) -> str:
    """12 s, 3 min 20 s, 2 h 05 min."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _Progress:
    """A rich progress bar on a terminal; plain lines (at most every 30 s) otherwise; nothing when quiet."""

    def __init__(self, trainer: Trainer, enabled: bool):
        from rich.console import Console

        self.trainer, self.enabled = trainer, enabled
        self.console = Console(stderr=True, emoji=False)  # paths and values print as they are (":x:" stays)
        self.bar = None
        self.fields: Dict[str, Any] = {"loss": None, "val": None, "rate": 0.0}  # None: not known yet, not shown
        self._last_line = 0.0

    def __enter__(self) -> "_Progress":
        if self.enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.2f} it/s"), TimeRemainingColumn(),
                TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[val]}"),
                console=self.console,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.trainer.cfg.steps, completed=self.trainer.step,
                                          loss="", rate=0.0, val="")
        return self

    def update(self, step: int, loss: Optional[float] = None, rate: Optional[float] = None, val: Optional[float] = None) -> None:
        if not self.enabled:
            return
        for k, v in (("loss", loss), ("rate", rate), ("val", val)):
            if v is not None:
                self.fields[k] = v
        if self.bar is not None:
            val_txt = f"val {self.fields['val']:.2f} dB" if self.fields["val"] is not None else ""
            loss_txt = f"loss {self.fields['loss']:.4f}" if self.fields["loss"] is not None else ""
            self.bar.update(self.task, completed=step, loss=loss_txt, rate=self.fields["rate"], val=val_txt)
        elif loss is not None or val is not None:
            now = time.monotonic()
            if now - self._last_line >= 30 or val is not None or step == self.trainer.cfg.steps:
                self._last_line = now
                v = f" val {self.fields['val']:.3f} dB" if self.fields["val"] is not None else ""
                loss_txt = f" loss {self.fields['loss']:.5f}" if self.fields["loss"] is not None else ""
                self.console.print(
                    f"step {step}/{self.trainer.cfg.steps}{loss_txt} "
                    f"{self.fields['rate']:.2f} it/s{v}", highlight=False
                )

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)  # one line each, whatever the width

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


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
