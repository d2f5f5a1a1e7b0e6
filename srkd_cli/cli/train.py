"""`srkd train` and `srkd distill`: parse the options into a TrainConfig and call `training.train`."""

from __future__ import annotations

import inspect
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from ..archs import ARCHS
from ..config import or_list, parse_settings
from ..errors import ConfigError
from . import app
from .console import console

# Options both commands share, in one place so `train` and `distill` cannot drift apart.
DATA = typer.Option(..., "--data", help="Folder of HR training images (PNG/JPEG/WebP/BMP/TIFF, searched recursively); repeatable.")
VAL = typer.Option(None, "--val", help="Validation folder (HR/ + LR_bicubic/X{s}/, or plain HR images); repeatable.")
OUT = typer.Option(..., "--out", help="Run folder: state.pt, log.jsonl, best.safetensors, final.safetensors.")
SCALE = typer.Option(..., "--scale", help="Upscaling factor: 2, 3 or 4.")
STEPS = typer.Option(100_000, "--steps", help="Optimiser steps.")
BATCH = typer.Option(16, "--batch", help="Global batch size (split across torchrun processes).")
PATCH = typer.Option(None, "--patch", help="LR patch side (default: 48 for convnets, 64 for SwinIR).")
LR = typer.Option(None, "--lr", help="Peak learning rate (default: 1e-3 squeezesr, 2e-4 edsr-t and swinir).")
WARMUP = typer.Option(None, "--warmup", help="Linear warm-up steps (default: min(1000, steps/20)).")
SCHEDULE = typer.Option("cosine", "--schedule", help="cosine (to 0) or multistep (halve at 50/80/90/95%).")
EMA = typer.Option(0.999, "--ema", help="EMA decay of the weights used for validation and export (0: off).")
CLIP = typer.Option(1.0, "--clip", help="Gradient-norm clipping (0: off).")
SEED = typer.Option(0, "--seed", help="Seed of the initial weights and of the patch stream.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
RESUME = typer.Option(False, "--resume", help="Continue the run in --out from its state.pt (starts fresh if there is none).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace the weights in an --out folder that holds some but no state.pt to resume.")
CKPT_EVERY = typer.Option(1000, "--ckpt-every", help="Save the training state every N steps (0: only at the end).")
VAL_EVERY = typer.Option(1000, "--val-every", help="Validate every N steps (0: only at the end).")
LOG_EVERY = typer.Option(50, "--log-every", help="Read the loss back from the device and log it every N steps.")
STOP_AFTER = typer.Option(None, "--stop-after", help="Checkpoint and stop after N steps of this invocation.")
TIME_LIMIT = typer.Option(None, "--time-limit", help="Checkpoint and stop after this many seconds.")
INIT = typer.Option(None, "--init", help="Start from these weights (file or zoo name; any scale): tensors of matching name and shape are copied.")
COMPILE = typer.Option(False, "--compile", help="torch.compile the model.")
FP32 = typer.Option(False, "--fp32", hidden=True, help="Same as --precision fp32 (kept for old commands).")
PRECISION = typer.Option("auto", "--precision", help="auto, fp32 or bf16 autocast (weights, optimizer and losses stay fp32). auto: bf16 on CUDA, and on CPUs with bf16 matrix units (AMX, AVX512-BF16) for the architectures measured faster with it (docs/performance.md); fp32 otherwise.")
VAL_SPLIT = typer.Option(0, "--val-split", help="Hold N training images out (spread over --data, never cut into patches): best.safetensors is picked on them; --val sets are then monitors only.")
THREADS = typer.Option(None, "--threads", help="CPU threads for torch (1 is fastest on a busy machine) (default: torch's).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress output.")
REPARAM = typer.Option(0, "--reparam", help="Train every conv over-parameterised (expansion width N, e.g. 64; collapsed every step and at export to the plain architecture; squeezesr) (0: off).")
SET = typer.Option(None, "--set", help="Architecture option KEY=VALUE (e.g. embed_dim=48); repeatable.")


# (parameter, type, option) of every option `train` and `distill` share, added to both signatures
# by `_shared_options`: Typer reads options from the signature, so they are declared once here.
SHARED = [
    ("set_", Optional[List[str]], SET), ("scale", int, SCALE), ("data", List[str], DATA), ("val", Optional[List[str]], VAL),
    ("out", str, OUT), ("steps", int, STEPS), ("batch", int, BATCH), ("patch", Optional[int], PATCH),
    ("lr", Optional[float], LR), ("warmup", Optional[int], WARMUP), ("schedule", str, SCHEDULE), ("ema", float, EMA),
    ("clip", float, CLIP), ("seed", int, SEED), ("device", str, DEVICE), ("resume", bool, RESUME), ("overwrite", bool, OVERWRITE),
    ("ckpt_every", int, CKPT_EVERY), ("val_every", int, VAL_EVERY), ("log_every", int, LOG_EVERY),
    ("stop_after", Optional[int], STOP_AFTER), ("time_limit", Optional[float], TIME_LIMIT), ("compile", bool, COMPILE),
    ("fp32", bool, FP32), ("precision", str, PRECISION), ("val_split", int, VAL_SPLIT), ("threads", Optional[int], THREADS), ("quiet", bool, QUIET), ("init", Optional[str], INIT),
    ("reparam", int, REPARAM),
]


def _shared_options(fn):
    """Give `fn(own options..., **kw)` the SHARED options as keyword parameters Typer can see."""
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=kind) for name, kind, opt in SHARED]
    fn.__signature__ = sig.replace(parameters=own + shared)
    return fn


def _arch_overrides(arch: str, sets: Optional[List[str]], blocks: Optional[int], flag: str) -> Dict[str, Any]:
    """--set and the blocks flag as options of `arch`, checked (one line naming the flag) before any loading."""
    from ..archs import get_arch
    from ..archs.options import OptionError

    overrides = parse_settings(sets)
    if blocks is not None:
        overrides["blocks"] = blocks
    try:
        get_arch(arch).config(**overrides)
    except OptionError as e:
        if e.option == "blocks" and blocks is not None:
            raise ConfigError(f"{flag} {blocks}: accepts {e.accepts}") from None
        raise
    return overrides


def _run(cfg_kwargs: Dict[str, Any]) -> int:
    from ..training import TrainConfig, train

    cfg = TrainConfig(command=shlex.join(["srkd", *sys.argv[1:]]), **cfg_kwargs)
    result = train(cfg)
    if not result.completed:  # the trainer has said where it stopped
        return 130 if result.stop_reason in ("interrupted", "terminated") else 0
    if result.final is not None and not cfg.quiet and not result.already_complete:
        loss = f", last loss {result.last_loss:.5f}" if result.last_loss is not None else ""
        best = f", best val PSNR-Y {result.best_psnr:.3f} dB ({result.best})" if result.best_psnr is not None else ""
        console.print(f"completed {result.step} steps: {result.final}{loss}{best}", highlight=False, soft_wrap=True)
    return 0


def _common(**kw: Any) -> Dict[str, Any]:
    return dict(
        scale=kw["scale"], data=[Path(d) for d in kw["data"]], val=[Path(v) for v in kw["val"] or []],
        out=Path(kw["out"]), init=kw["init"], steps=kw["steps"], batch=kw["batch"], patch=kw["patch"], lr=kw["lr"],
        warmup=kw["warmup"], schedule=kw["schedule"], ema=kw["ema"], clip=kw["clip"], seed=kw["seed"],
        device=kw["device"], resume=kw["resume"], overwrite=kw["overwrite"], ckpt_every=kw["ckpt_every"], val_every=kw["val_every"],
        log_every=kw["log_every"], stop_after=kw["stop_after"], time_limit=kw["time_limit"],
        compile=kw["compile"], precision="fp32" if kw["fp32"] else kw["precision"], val_split=kw["val_split"], threads=kw["threads"], quiet=kw["quiet"], reparam=kw["reparam"],
    )


@app.command()
@_shared_options
def train(
    arch: str = typer.Option(..., "--arch", help=f"Architecture: {', '.join(ARCHS)}."),
    blocks: Optional[int] = typer.Option(None, "--blocks", help="Residual/squeeze blocks or RSTBs (default: the architecture's)."),
    **kw: Any,
) -> int:
    """Train an architecture from scratch with L1 on HR patches (LR made with MATLAB bicubic)."""
    overrides = _arch_overrides(arch, kw["set_"], blocks, "--blocks")
    return _run(dict(arch=arch, arch_config=overrides, **_common(**kw)))


def _pairings_help() -> str:
    """--student's help, from the one table of pairings (training.recipes.PAIRINGS), so it lists every pair."""
    from ..training.recipes import ANY_STUDENT, ANY_TEACHER, PAIRINGS

    ways: Dict[str, Dict[str, List[str]]] = {}  # student -> recipe -> teachers
    for (student, teacher), pairing in PAIRINGS.items():
        if student == ANY_STUDENT:
            continue  # said once, below
        how = ("paper 2's recipe" if pairing.recipe == "alpha" else "its output alone, --out-weight"
               if teacher == ANY_TEACHER else "paper 1's recipe")
        ways.setdefault(student, {}).setdefault(how, []).append("any other" if teacher == ANY_TEACHER else teacher)
    return "Student architecture: " + "; ".join(
        f"{student} from " + " or ".join(f"{or_list(teachers)} ({how})" for how, teachers in by.items())
        for student, by in ways.items()) + "; any other pair: output KD (any teacher srkd loads)."


@app.command()
@_shared_options
def distill(
    teacher: str = typer.Option(..., "--teacher", help="Teacher: zoo name (imdn, imdn-x2, swinir4, ...) or weights file."),
    student: str = typer.Option(..., "--student", help=_pairings_help()),
    student_blocks: Optional[int] = typer.Option(None, "--student-blocks", help="Student blocks (default: swinir teacher's - 1; squeezesr: the teacher's)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Paper 2 (a swinir student of a swinir teacher): weight of L1(S,HR), in [0, 1]; 1-alpha goes to L1(S,T)+MSE(F1) (default: 0.75)."),
    feat_loss: str = typer.Option("l1", "--feat-loss", help="Paper 1: feature distance, l1 or mse."),
    feat_weight: float = typer.Option(0.1, "--feat-weight", help="Paper 1: weight beta of the feature loss."),
    out_weight: Optional[float] = typer.Option(None, "--out-weight", help="Add this weight times L1(student, teacher output) (paper 2's output term) (default: 0 with feature pairs, 1 for output KD)."),
    teacher_cache: str = typer.Option("off", "--teacher-cache", help="off (teacher runs every step on the patch), ram, or a folder: teacher outputs/features computed once per image and augmentation; halo[:R]: no cache, the teacher runs on each patch widened by R LR pixels (default: its receptive radius)."),
    cache_dtype: str = typer.Option("fp16", "--cache-dtype", help="How the teacher cache stores targets: fp16, uint8 (half the size: the 8-bit image, features in 256 steps a channel) or fp32."),
    teacher_only: bool = typer.Option(False, "--teacher-only", help="No HR images: --data images are the student's inputs as they are, the teacher's output the only target (validation: against the teacher's output)."),
    init_from_teacher: bool = typer.Option(False, "--init-from-teacher", help="SwinIR: start from the teacher's head, first k RSTBs and tail."),
    **kw: Any,
) -> int:
    """Distil a student from a frozen teacher (paper 1 or paper 2 recipe, chosen by the pair)."""
    overrides = _arch_overrides(student, kw["set_"], student_blocks, "--student-blocks")
    return _run(dict(
        arch=student, arch_config=overrides, teacher=teacher, init_from_teacher=init_from_teacher,
        alpha=alpha, feat_loss=feat_loss, feat_weight=feat_weight, out_weight=out_weight, teacher_cache=teacher_cache,
        cache_dtype=cache_dtype, teacher_only=teacher_only, **_common(**kw),
    ))
