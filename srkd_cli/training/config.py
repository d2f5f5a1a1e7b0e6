"""What a training run is asked to do (TrainConfig), its one-line checks, and what it returns (RunResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..archs import SRModel
from ..config import check_scale
from ..errors import ConfigError, SrkdError
from ..runtime.cpu import cpu_bf16_units
from .teacher_cache import DTYPES as CACHE_DTYPES

SCHEDULES = ("cosine", "multistep")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
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


def check_config(cfg: TrainConfig) -> None:
    """One line (ConfigError) for the first option that cannot work, before anything is loaded."""
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
