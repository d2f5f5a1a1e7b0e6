"""The full training state (`state.pt`): what a checkpoint holds, and a bit-exact --resume from it.

A mixin of `trainer.Trainer`, kept apart so the loop's file stays about the loop.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from ..atomic import atomic_write
from ..checkpoint import _why_unreadable
from ..distributed import gather_objects
from ..errors import ConfigError

STATE_FILE = "state.pt"


class RunState:
    """`_state()` / `save_state()` / `_load_state()` over the Trainer's attributes."""

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
            atomic_write(self.out / STATE_FILE, lambda tmp: torch.save(state, tmp))
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
        was = st.get("recipe", {}).get("recipe")
        if was != self.recipe.name:
            raise ConfigError(f"--resume: {path} was trained with recipe {was}, not {self.recipe.name}")
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
