"""Helpers shared by the daemon tests: bounded waiting and a stand-in for systemd's socket."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def children_of(pid: int) -> list[int]:
    """The live children of ``pid``, started by any of its threads (each thread lists its own
    in /proc); [] when ``pid`` is gone."""
    pids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                pids += map(int, (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError):  # that thread ended meanwhile
                continue
    except (FileNotFoundError, ProcessLookupError):
        return []
    return pids


def child_of(pid: int, marker: bytes) -> int | None:
    """The child of ``pid`` whose command line holds ``marker`` (None: none now)."""
    for child in children_of(pid):
        try:
            if marker in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except (FileNotFoundError, ProcessLookupError):
            continue
    return None


def watch_process(
    args: list, log: Path, notify: NotifySocket, *, env: dict | None = None, **popen
) -> subprocess.Popen:
    """``docwatch watch ARGS`` (this interpreter's) with its output in ``log`` and ``notify``
    standing in for systemd's socket; none of the caller's ``DOCWATCH_``, ``NOTIFY`` and
    ``DAGSTER_`` variables, ``env`` added."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("DOCWATCH_", "NOTIFY", "DAGSTER_"))
    }
    clean |= (env or {}) | {"NOTIFY_SOCKET": notify.path}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "docwatch", "watch", *map(str, args)],
            env=clean,
            stdout=out,
            stderr=subprocess.STDOUT,
            **popen,
        )


def kill_if_running(proc: subprocess.Popen) -> None:
    """A test's last word on a process it started: killed and reaped if still running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def wait_until(cond, timeout: float = 60.0, interval: float = 0.1, what: str = ""):
    """Poll ``cond`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        time.sleep(interval)


class NotifySocket:
    """A bound unix datagram socket standing in for systemd; collects every sd_notify message
    with its arrival time (also used by bench/live.py)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="dwn")  # short: sun_path is 108 bytes
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, str]] = []  # (time.time(), message)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.time(), data.decode(errors="replace")))

    @property
    def messages(self) -> list[str]:
        return [m for _, m in list(self.received)]

    def first(self, line: str) -> float | None:
        """When ``line`` first arrived (None: not yet)."""
        return next((t for t, m in list(self.received) if line in m.splitlines()), None)

    def count(self, line: str) -> int:
        return sum(line in m.splitlines() for m in self.messages)

    def seen(self, line: str) -> bool:
        return self.count(line) > 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
