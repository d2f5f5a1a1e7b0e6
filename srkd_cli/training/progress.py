"""What a run shows while it trains: a rich bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional


def duration(seconds: float) -> str:
    """12 s, 3 min 20 s, 2 h 05 min."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class TrainProgress:
    """A rich progress bar on a terminal; plain lines (at most every 30 s) otherwise; nothing when quiet."""

    def __init__(self, trainer: Any, enabled: bool):
        from rich.console import Console

        self.trainer, self.enabled = trainer, enabled
        self.console = Console(stderr=True, emoji=False)  # paths and values print as they are (":x:" stays)
        self.bar = None
        self.fields: Dict[str, Any] = {"loss": None, "val": None, "rate": 0.0}  # None: not known yet, not shown
        self._last_line = 0.0

    def __enter__(self) -> "TrainProgress":
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
