"""SIGTERM/SIGINT for the daemon: the first asks for a stop, a second exits at once.

Signals are read by a thread from the wakeup fd, so they count even while the main thread is
blocked inside a C call (SQLite waiting on a lock, a slow fsync).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore(signum, frame) -> None:
    """Python-level no-op: the signal thread acts on the wakeup fd's byte instead."""


class SignalHandling:
    """Installed for the daemon's lifetime (``with``): ``on_stop`` at the first signal,
    ``os._exit(128 + signal)`` at the second (safe: a batch is all-or-nothing, and the next
    start recovers)."""

    def __init__(self, on_stop: Callable[[], None]) -> None:
        self.on_stop = on_stop
        self.count = 0
        self._old: dict = {}
        self._old_wakeup: int | None = None
        self._write_fd: int | None = None

    def __enter__(self) -> SignalHandling:
        read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._old = {signum: signal.signal(signum, _ignore) for signum in SIGNALS}
        self._old_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        threading.Thread(
            target=self._loop, args=(read_fd,), name="docwatch-signals", daemon=True
        ).start()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
        if self._write_fd is not None:
            os.close(self._write_fd)  # ends the signal thread

    def _loop(self, read_fd: int) -> None:
        while data := os.read(read_fd, 64):
            for signum in data:
                if signum in SIGNALS:
                    self.received(signum)
        os.close(read_fd)

    def received(self, signum: int) -> None:
        self.count += 1
        if self.count > 1:
            os._exit(128 + signum)  # second signal: at once (batches are all-or-nothing)
        self.on_stop()
