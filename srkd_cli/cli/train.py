"""`srkd train` and `srkd distill`: parse the options into a TrainConfig and call `training.train`.

The options are TrainConfig's (training/config.py declares each field's flag and help), so both
commands and the config cannot drift apart: a new option is one field there.
"""

from __future__ import annotations

import inspect
import shlex
from typing import Any

import typer

from ..training.config import cli_options, config_from_cli
from . import app, invoked_args
from .console import console


def _run(command: str, values: Any) -> int:
    from ..training import TrainConfig, train

    cfg = TrainConfig(command=shlex.join(["srkd", *invoked_args()]), **config_from_cli(command, values))
    result = train(cfg)
    if not result.completed:  # the trainer has said where it stopped
        return 130 if result.stop_reason in ("interrupted", "terminated") else 0
    if result.final is not None and not cfg.quiet and not result.already_complete:
        loss = f", last loss {result.last_loss:.5f}" if result.last_loss is not None else ""
        best = f", best val PSNR-Y {result.best_psnr:.3f} dB ({result.best})" if result.best_psnr is not None else ""
        console.print(f"completed {result.step} steps: {result.final}{loss}{best}", highlight=False, soft_wrap=True)
    return 0


def _command(name: str, doc: str) -> None:
    """Register `srkd NAME`, its options built from TrainConfig's fields (`cli_options`)."""

    def command(**values: Any) -> int:
        return _run(name, values)

    params = [
        inspect.Parameter(o.opt.param, inspect.Parameter.KEYWORD_ONLY, annotation=o.annotation, default=typer.Option(
            o.default, o.opt.flag, *([o.opt.short] if o.opt.short else []), help=o.opt.help, hidden=o.opt.hidden))
        for o in cli_options(name)
    ]
    command.__signature__ = inspect.Signature(params)  # Typer reads the options from the signature
    command.__doc__ = doc
    command.__name__ = name
    app.command(name)(command)


_command("train", "Train an architecture from scratch with L1 on HR patches (LR made with MATLAB bicubic).")
_command("distill", "Distil a student from a frozen teacher (paper 1 or paper 2 recipe, chosen by the pair).")
