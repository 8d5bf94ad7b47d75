"""Advisory locks beside the index: one writer per batch, one daemon per index.

flock(2) locks vanish with their process, so a killed writer never leaves the index stuck.
They live next to the database, never in the watched folders.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from docwatch.errors import IndexBusy
from docwatch.store.folders import made_if_missing


class FileLock:
    """An flock on ``path``: exclusive (the holder's pid is written into the file) or shared."""

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    def acquire(
        self, timeout: float | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> bool:
        """Take the lock, waiting up to ``timeout`` seconds (None = forever); False on timeout.

        ``sleep`` lets a daemon keep its watchdog fed (and honour a stop) while it waits.
        """
        fd = self._open()
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                try:
                    sleep(delay)
                except BaseException:
                    os.close(fd)
                    raise
                delay = min(delay * 2, 0.1)
        if not self.shared:
            self._say_holder(fd)
        self._fd = fd
        return True

    def _open(self) -> int:
        """The lock file, made with its folder the first time (a writer takes its lock every
        batch: trying the open first spares each one a ``mkdir`` that fails)."""
        return made_if_missing(
            self.path.parent, 0o777, os.open, self.path, os.O_RDWR | os.O_CREAT, 0o644
        )

    @staticmethod
    def _say_holder(fd: int) -> None:
        """Our pid in the file, for ``holder``; not written again when the file already says
        so (the writer's next batch): a write would dirty the file for every batch's sync."""
        pid = f"{os.getpid()}\n".encode()
        if os.pread(fd, len(pid) + 1, 0) != pid:
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def writer_lock(db_path: Path) -> FileLock:
    """Serialises batches of every docwatch process writing this index."""
    return FileLock(db_path.with_name(db_path.name + ".writer.lock"))


def claim_daemon(db_path: Path) -> FileLock:
    """Held for the daemon's lifetime; a second ``watch`` on the same index is refused."""
    lock = FileLock(db_path.with_name(db_path.name + ".daemon.lock"))
    if not lock.acquire(timeout=0):
        raise IndexBusy(
            f"{db_path}: another `docwatch watch` (pid {lock.holder()}) already indexes this "
            f"index; stop it first (systemctl stop docwatch) or point --db elsewhere"
        )
    return lock


def use_index(db_path: Path) -> FileLock:
    """Held (shared) by every writer for its lifetime: ``rebuild-index`` needs it alone."""
    lock = FileLock(db_path.with_name(db_path.name + ".users.lock"), shared=True)
    if not lock.acquire(timeout=0):
        raise IndexBusy(
            f"{db_path}: `docwatch rebuild-index` is rebuilding this index; retry after it"
        )
    return lock


def claim_index_alone(db_path: Path) -> FileLock:
    """For ``rebuild-index``: refused while any scan, watch or repair uses the index."""
    lock = FileLock(db_path.with_name(db_path.name + ".users.lock"))
    if not lock.acquire(timeout=0):
        raise IndexBusy(
            f"{db_path}: a docwatch scan, watch or verify --repair is using this index; "
            "stop it first (systemctl stop docwatch), then rebuild"
        )
    return lock
