"""The download bar: rich on stderr, drawn only on a terminal."""

from __future__ import annotations

from typing import Any, Optional


def err_console():
    from rich.console import Console

    return Console(stderr=True)


class RichBar:
    """A tqdm-shaped download bar drawn with rich on stderr.

    Given to `hf_hub_download` as `tqdm_class` (it calls update/update_transfer, sets total,
    refresh, close) and used directly for plain-URL downloads.
    """

    enabled = True

    def __init__(self, *args: Any, total: Optional[float] = None, initial: float = 0, desc: Optional[str] = None,
                 disable: Optional[bool] = False, **_ignored: Any) -> None:
        self.n = initial
        self._total = total
        self._progress = None
        console = err_console()
        # Only on a terminal: in logs and pipes a live bar is noise.
        if self.enabled and not disable and console.is_terminal:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn(), console=console, transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(desc or "download", total=total, completed=initial)

    @property
    def total(self) -> Optional[float]:
        return self._total

    @total.setter
    def total(self, value: Optional[float]) -> None:
        self._total = value
        if self._progress is not None:
            self._progress.update(self._task, total=value)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._progress is not None:
            self._progress.update(self._task, completed=self.n)

    def update_transfer(self, n: float = 1) -> None:
        """Network bytes (Xet downloads count them apart from file bytes): the bar shows file bytes."""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    set_transfer_postfix_str = set_postfix_str

    def refresh(self) -> None:
        if self._progress is not None:
            self._progress.refresh()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> "RichBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SilentBar(RichBar):
    enabled = False
