"""SIGTERM and SIGHUP handled like Ctrl-C: the same clean-up, then exit 128 + the signal.

Python turns SIGINT into KeyboardInterrupt, so `finally` blocks and `except BaseException`
clean-up (temporary output files) run; SIGTERM and SIGHUP would kill the process on the spot.
`as_interrupts()` raises `Terminated`, a KeyboardInterrupt, for them instead.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; `exit_code` is 128 + the signal's number (143 for SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum
        self.name = signal.Signals(signum).name


def _raise(signum, frame):
    # A second one acts at once: the first may wait for C code (a collective, a long kernel)
    # to hand control back to Python before the clean-up can run.
    signal.signal(signum, signal.SIG_DFL)
    raise Terminated(signum)


@contextmanager
def as_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise Terminated in the main thread.

    Only signals left at their default action are taken over: one a parent set to be ignored
    (`nohup` ignores SIGHUP) stays ignored. The previous handlers come back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    saved: Dict[int, object] = {}
    try:
        for sig in _SIGNALS:
            if signal.getsignal(sig) is signal.SIG_DFL:
                saved[sig] = signal.signal(sig, _raise)
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


class StopFlag:
    """SIGINT/SIGTERM set a flag the loop reads (a second Ctrl-C interrupts at once); the old
    handlers come back afterwards. `notify(signum)` is called when one arrives (e.g. to log it).
    The training loop and research/gpu/gpu_run.py both stop this way."""

    def __init__(self, notify: Optional[Callable[[int], None]] = None) -> None:
        self.signal: Optional[int] = None
        self._notify = notify
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the checkpoint
        self.signal = signum
        if self._notify is not None:
            self._notify(signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
