"""What a training run is asked to do (TrainConfig), its one-line checks, and what it returns (RunResult).

TrainConfig is also the one declaration of `srkd train` / `srkd distill`'s options: a field given
on the command line carries its options (`Opt`: flag, help, commands) as field metadata, and
`cli_options` / `config_from_cli` turn those into the commands' options and back into a config.
The options are listed in field order, a command's own ones first.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch

from ..archs import ARCHS, SRModel
from ..config import check_scale, parse_settings
from ..errors import ConfigError, SrkdError
from ..runtime.cpu import cpu_bf16_units
from .losses import DISTANCES
from .recipes import pairings_help
from .teacher_cache import DTYPES as CACHE_DTYPES

SCHEDULES = ("cosine", "multistep")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_ALPHA = 0.75  # paper 2's

COMMANDS = ("train", "distill")
TRAIN, DISTILL = ("train",), ("distill",)
FIELD_DEFAULT = object()  # Opt.default: the field's own default


class TrainingDiverged(SrkdError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class Opt:
    """One command-line option that sets a TrainConfig field."""

    flag: str
    help: str
    commands: Tuple[str, ...] = COMMANDS
    default: Any = FIELD_DEFAULT  # on the command line; ...: required
    kind: Any = None  # the type the command line parses; None: the field's, with paths as str
    hidden: bool = False
    short: Optional[str] = None

    @property
    def param(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


# A field's value from its options' values in one command, by flag; the fields before it are in `cfg`.
Collect = Callable[[Dict[str, Any], Dict[str, Any]], Any]


def cli(*opts: Opt, collect: Optional[Collect] = None, **kw: Any) -> Any:
    """A TrainConfig field set by `opts`; `collect` makes the value when it is not the one option's value."""
    return field(metadata={"cli": opts, "collect": collect}, **kw)


def _arch_config(given: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
    """--set and the blocks flag as options of the architecture, checked (one line naming the flag) before any loading."""
    from ..archs import get_arch
    from ..archs.options import OptionError

    overrides = parse_settings(given.pop("--set"))
    (flag, blocks), = given.items()  # --blocks or --student-blocks
    if blocks is not None:
        overrides["blocks"] = blocks
    try:
        get_arch(cfg["arch"]).config(**overrides)
    except OptionError as e:
        if e.option == "blocks" and blocks is not None:
            raise ConfigError(f"{flag} {blocks}: accepts {e.accepts}") from None
        raise
    return overrides


@dataclass
class TrainConfig:
    """Everything a run needs; `None` means "the architecture's default".

    A field set from the command line says how, with `cli(Opt(...))`: that is the whole of a new
    option. --help lists them in field order (required fields must come first in a dataclass).
    """

    arch: str = cli(Opt("--arch", f"Architecture: {', '.join(ARCHS)}.", TRAIN),
                    Opt("--student", pairings_help(), DISTILL))
    scale: int = cli(Opt("--scale", "Upscaling factor: 2, 3 or 4."))
    data: List[Path] = cli(Opt("--data", "Folder of HR training images (PNG/JPEG/WebP/BMP/TIFF, searched recursively); repeatable."))
    out: Path = cli(Opt("--out", "Run folder: state.pt, log.jsonl, best.safetensors, final.safetensors."))
    val: List[Path] = cli(Opt("--val", "Validation folder (HR/ + LR_bicubic/X{s}/, or plain HR images); repeatable.", default=None),
                          default_factory=list)
    arch_config: Dict[str, Any] = cli(  # overrides, e.g. {"blocks": 2}
        Opt("--blocks", "Residual/squeeze blocks or RSTBs (default: the architecture's).", TRAIN, kind=Optional[int], default=None),
        Opt("--student-blocks", "Student blocks (default: swinir teacher's - 1; squeezesr: the teacher's).", DISTILL,
            kind=Optional[int], default=None),
        Opt("--set", "Architecture option KEY=VALUE (e.g. embed_dim=48); repeatable.", kind=Optional[List[str]], default=None),
        collect=_arch_config, default_factory=dict)
    steps: int = cli(Opt("--steps", "Optimiser steps."), default=100_000)
    batch: int = cli(Opt("--batch", "Global batch size (split across torchrun processes)."), default=16)
    patch: Optional[int] = cli(Opt("--patch", "LR patch side (default: 48 for convnets, 64 for SwinIR)."), default=None)
    lr: Optional[float] = cli(Opt("--lr", "Peak learning rate (default: 1e-3 squeezesr, 2e-4 edsr-t and swinir)."), default=None)
    warmup: Optional[int] = cli(Opt("--warmup", "Linear warm-up steps (default: min(1000, steps/20))."), default=None)
    schedule: str = cli(Opt("--schedule", "cosine (to 0) or multistep (halve at 50/80/90/95%)."), default="cosine")
    ema: float = cli(Opt("--ema", "EMA decay of the weights used for validation and export (0: off)."), default=0.999)
    clip: float = cli(Opt("--clip", "Gradient-norm clipping (0: off)."), default=1.0)
    seed: int = cli(Opt("--seed", "Seed of the initial weights and of the patch stream."), default=0)
    device: str = cli(Opt("--device", "auto, cpu, cuda or cuda:N."), default="auto")
    resume: bool = cli(Opt("--resume", "Continue the run in --out from its state.pt (starts fresh if there is none)."),
                       default=False)
    overwrite: bool = cli(Opt("--overwrite", "Replace the weights in an --out folder that holds some but no state.pt to resume."),
                          default=False)
    ckpt_every: int = cli(Opt("--ckpt-every", "Save the training state every N steps (0: only at the end)."), default=1000)
    val_every: int = cli(Opt("--val-every", "Validate every N steps (0: only at the end)."), default=1000)
    log_every: int = cli(Opt("--log-every", "Read the loss back from the device and log it every N steps."), default=50)
    stop_after: Optional[int] = cli(Opt("--stop-after", "Checkpoint and stop after N steps of this invocation."), default=None)
    time_limit: Optional[float] = cli(Opt("--time-limit", "Checkpoint and stop after this many seconds."), default=None)
    compile: bool = cli(Opt("--compile", "torch.compile the model."), default=False)
    # autocast; weights, optimizer, EMA and losses stay fp32
    precision: str = cli(
        Opt("--fp32", "Same as --precision fp32 (kept for old commands).", kind=bool, default=False, hidden=True),
        Opt("--precision", "auto, fp32 or bf16 autocast (weights, optimizer and losses stay fp32). auto: bf16 on CUDA, "
            "and on CPUs with bf16 matrix units (AMX, AVX512-BF16) for the architectures measured faster with it "
            "(docs/performance.md); fp32 otherwise."),
        collect=lambda given, cfg: "fp32" if given["--fp32"] else given["--precision"], default="auto")
    val_split: int = cli(Opt("--val-split", "Hold N training images out (spread over --data, never cut into patches): "
                             "best.safetensors is picked on them; --val sets are then monitors only."), default=0)
    threads: Optional[int] = cli(Opt("--threads", "CPU threads for torch (1 is fastest on a busy machine) (default: torch's)."),
                                 default=None)
    quiet: bool = cli(Opt("--quiet", "No progress output.", short="-q"), default=False)
    init: Optional[str] = cli(Opt("--init", "Start from these weights (file or zoo name; any scale): tensors of matching "
                                  "name and shape are copied."), default=None)
    reparam: int = cli(Opt("--reparam", "Train every conv over-parameterised (expansion width N, e.g. 64; collapsed every "
                           "step and at export to the plain architecture; squeezesr) (0: off)."), default=0)
    loss: str = cli(Opt("--loss", "Pixel loss to the HR patch: l1, or mse (e.g. an L2 fine-tune of L1-trained weights "
                        "with --init).", TRAIN), default="l1")
    # distillation
    teacher: Optional[str] = cli(Opt("--teacher", "Teacher: zoo name (imdn, imdn-x2, swinir4, ...) or weights file.",
                                     DISTILL, kind=str, default=...), default=None)
    alpha: Optional[float] = cli(Opt(  # None: DEFAULT_ALPHA (given to another recipe: a warning)
        "--alpha", "Paper 2 (a swinir student of a swinir teacher): weight of L1(S,HR), in [0, 1]; 1-alpha goes to "
        "L1(S,T)+MSE(F1) (default: 0.75).", DISTILL), default=None)
    feat_loss: str = cli(Opt("--feat-loss", "Paper 1: feature distance, l1 or mse.", DISTILL), default="l1")
    feat_weight: float = cli(Opt("--feat-weight", "Paper 1: weight beta of the feature loss.", DISTILL), default=0.1)
    out_weight: Optional[float] = cli(Opt(
        "--out-weight", "Add this weight times L1(student, teacher output) (paper 2's output term) (default: 0 with "
        "feature pairs, 1 for output KD).", DISTILL), default=None)
    teacher_cache: str = cli(Opt(  # training/teacher_cache.py
        "--teacher-cache", "off (teacher runs every step on the patch), ram, or a folder: teacher outputs/features "
        "computed once per image and augmentation; halo[:R]: no cache, the teacher runs on each patch widened by R LR "
        "pixels (default: its receptive radius).", DISTILL), default="off")
    cache_dtype: str = cli(Opt(
        "--cache-dtype", "How the teacher cache stores targets: fp16, uint8 (half the size: the 8-bit image, features "
        "in 256 steps a channel) or fp32.", DISTILL), default="fp16")
    teacher_only: bool = cli(Opt(
        "--teacher-only", "No HR images: --data images are the student's inputs as they are, the teacher's output the "
        "only target (validation: against the teacher's output).", DISTILL), default=False)
    init_from_teacher: bool = cli(Opt("--init-from-teacher", "SwinIR: start from the teacher's head, first k RSTBs and tail.",
                                      DISTILL), default=False)
    command: Optional[str] = None  # recorded in provenance; not an option


class CliOption(NamedTuple):
    """One option of a command, as `cli_options` lists it."""

    opt: Opt
    annotation: Any  # what the command line parses
    default: Any  # ...: required


def _cli_type(hint: Any) -> Any:
    """A field's type as the command line parses it: paths arrive as str."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return List[_cli_type(args[0])]
    if origin is typing.Union:
        return typing.Union[tuple(_cli_type(a) for a in args)]
    return str if hint is Path else hint


@lru_cache(maxsize=None)
def cli_options(command: str) -> Tuple[CliOption, ...]:
    """`command`'s options, in the order --help lists them: its own first, then the shared ones, each in field order."""
    hints = typing.get_type_hints(TrainConfig)
    own, shared = [], []
    for f in fields(TrainConfig):
        for opt in f.metadata.get("cli", ()):
            if command not in opt.commands:
                continue
            default = opt.default
            if default is FIELD_DEFAULT:
                default = f.default if f.default is not MISSING else None if f.default_factory is not MISSING else ...
            kind = opt.kind if opt.kind is not None else _cli_type(hints[f.name])
            if default is None and typing.get_origin(kind) is not typing.Union:
                kind = Optional[kind]
            (own if opt.commands != COMMANDS else shared).append(CliOption(opt, kind, default))
    return (*own, *shared)


def config_from_cli(command: str, values: Mapping[str, Any]) -> Dict[str, Any]:
    """TrainConfig's keyword arguments from `command`'s parsed options (`values` by `Opt.param`)."""
    hints = typing.get_type_hints(TrainConfig)
    cfg: Dict[str, Any] = {}
    for f in fields(TrainConfig):
        given = {o.flag: values[o.param] for o in f.metadata.get("cli", ()) if command in o.commands}
        if not given:
            continue
        if f.metadata["collect"] is not None:
            cfg[f.name] = f.metadata["collect"](given, cfg)
            continue
        (value,) = given.values()
        if hints[f.name] is Path:
            value = Path(value)
        elif hints[f.name] == List[Path]:
            value = [Path(v) for v in value or []]
        cfg[f.name] = value
    return cfg


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
    if cfg.loss not in DISTANCES:
        raise ConfigError(f"--loss {cfg.loss}: use one of {', '.join(DISTANCES)}")
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
