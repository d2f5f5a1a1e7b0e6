"""`srkd train` / `srkd distill` options come from TrainConfig's fields (training/config.py), in one place."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

import srkd_cli.training as training
from srkd_cli.training import RunResult, TrainConfig
from srkd_cli.training.config import COMMANDS, cli_options


@pytest.fixture
def captured(monkeypatch):
    """Run the CLI with `training.train` replaced: the TrainConfig it would run, without training."""
    got = []

    def fake_train(cfg):
        got.append(cfg)
        return RunResult(cfg.out, 0, False, None, None, None, None, model=None)

    monkeypatch.setattr(training, "train", fake_train)
    return got


REQUIRED = {"train": ["--arch", "squeezesr"], "distill": ["--student", "squeezesr", "--teacher", "t.safetensors"]}


def test_every_field_but_the_command_line_itself_is_an_option():
    named = {f.name for f in fields(TrainConfig) if f.metadata.get("cli")}
    assert named == {f.name for f in fields(TrainConfig)} - {"command"}
    for command in COMMANDS:
        flags = [o.opt.flag for o in cli_options(command)]
        assert len(flags) == len(set(flags))
    both = [o.opt.flag for o in cli_options("train") if o.opt.commands == COMMANDS]
    assert both == [o.opt.flag for o in cli_options("distill") if o.opt.commands == COMMANDS]


@pytest.mark.parametrize("command", COMMANDS)
def test_defaults_on_the_command_line_are_the_configs(command, run_cli, captured):
    code, _, err = run_cli(command, *REQUIRED[command], "--scale", "2", "--data", "d", "--out", "o")
    assert code == 0, err
    (cfg,) = captured
    want = TrainConfig(arch="squeezesr", scale=2, data=[Path("d")], out=Path("o"), command=cfg.command,
                       teacher="t.safetensors" if command == "distill" else None)
    assert cfg == want
    assert cfg.command.startswith("srkd ")


def test_every_option_reaches_the_config(run_cli, captured):
    code, _, err = run_cli(
        "distill", "--teacher", "t", "--student", "squeezesr", "--student-blocks", "2", "--set", "n_feats=64",
        "--scale", "3", "--data", "a", "--data", "b", "--val", "v", "--out", "o", "--steps", "7", "--batch", "2",
        "--patch", "9", "--lr", "0.5", "--warmup", "3", "--schedule", "multistep", "--ema", "0", "--clip", "0",
        "--seed", "4", "--device", "cpu", "--resume", "--overwrite", "--ckpt-every", "5", "--val-every", "6",
        "--log-every", "2", "--stop-after", "1", "--time-limit", "9", "--compile", "--fp32", "--val-split", "1",
        "--threads", "1", "-q", "--init", "i", "--reparam", "8", "--alpha", "0.5", "--feat-loss", "mse",
        "--feat-weight", "2", "--out-weight", "1", "--teacher-cache", "ram", "--cache-dtype", "uint8",
        "--teacher-only", "--init-from-teacher")
    assert code == 0, err
    (cfg,) = captured
    assert cfg == TrainConfig(
        arch="squeezesr", scale=3, data=[Path("a"), Path("b")], out=Path("o"), val=[Path("v")],
        arch_config={"n_feats": 64, "blocks": 2}, steps=7, batch=2, patch=9, lr=0.5, warmup=3, schedule="multistep",
        ema=0.0, clip=0.0, seed=4, device="cpu", resume=True, overwrite=True, ckpt_every=5, val_every=6, log_every=2,
        stop_after=1, time_limit=9.0, compile=True, precision="fp32", val_split=1, threads=1, quiet=True, init="i",
        reparam=8, teacher="t", alpha=0.5, feat_loss="mse", feat_weight=2.0, out_weight=1.0, teacher_cache="ram",
        cache_dtype="uint8", teacher_only=True, init_from_teacher=True, command=cfg.command)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_option_but_the_hidden_one(command, run_cli):
    code, out, _ = run_cli(command, "--help")
    assert code == 0
    for o in cli_options(command):
        assert (o.opt.flag in out) != o.opt.hidden, o.opt.flag  # --fp32 stays hidden
    assert "--teacher" in out if command == "distill" else "--teacher" not in out


def test_train_has_no_distillation_options(run_cli):
    code, _, err = run_cli("train", "--arch", "squeezesr", "--scale", "2", "--data", "d", "--out", "o", "--alpha", "1")
    assert code == 2 and "--alpha" in err
