"""The advisory locks beside the index (``store/locks.py``), on real files and processes."""

from __future__ import annotations

import os
import subprocess
import sys

from docwatch.store.locks import FileLock, writer_lock

PAST_NS = 1_600_000_000 * 10**9  # an mtime well in the past: a write would move it


#: A child that tries the lock once: exit 0 when it got it (then released), 3 when refused.
TRY_LOCK = (
    "import sys; from pathlib import Path; from docwatch.store.locks import FileLock\n"
    "lock = FileLock(Path(sys.argv[1]))\n"
    "sys.exit(0 if lock.acquire(timeout=0) else 3)\n"
)


def _try_in_another_process(path) -> int:
    """The exit status of a child process that tries the lock at ``path`` once."""
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(path)], timeout=60).returncode


def _take_in_another_process(path) -> int:
    """Take the lock in a child (released as it exits); its pid, as the file says."""
    assert _try_in_another_process(path) == 0
    return int(path.read_text())


def test_the_writer_lock_says_its_holder_and_is_not_written_again_by_each_batch(tmp_path):
    """A writer takes its lock every batch: the first take makes the folder and the file and
    writes the pid; the next ones leave the file alone (its mtime stays in the past), so the
    batch's sync has nothing of it to flush.  Another process's take, or a longer line, is
    written over."""
    lock = writer_lock(tmp_path / "db" / "documents.sqlite")  # the folder does not exist yet
    assert lock.acquire(timeout=1)
    lock.release()
    assert lock.holder() == str(os.getpid())
    os.utime(lock.path, ns=(PAST_NS, PAST_NS))
    for _ in range(3):
        assert lock.acquire(timeout=1)
        lock.release()
    assert os.stat(lock.path).st_mtime_ns == PAST_NS
    other = _take_in_another_process(lock.path)
    assert other != os.getpid()
    assert lock.acquire(timeout=1)
    lock.release()
    assert lock.holder() == str(os.getpid())
    lock.path.write_text(f"{os.getpid()}7\n")  # our pid is a prefix of this one
    assert lock.acquire(timeout=1)
    lock.release()
    assert lock.path.read_text() == f"{os.getpid()}\n"


def test_a_held_lock_is_refused_to_another_process_and_shared_locks_share(tmp_path):
    path = tmp_path / "x.lock"
    held = FileLock(path)
    assert held.acquire(timeout=0)
    assert _try_in_another_process(path) == 3
    held.release()
    assert _try_in_another_process(path) == 0
    a, b = FileLock(tmp_path / "s.lock", shared=True), FileLock(tmp_path / "s.lock", shared=True)
    assert a.acquire(timeout=0) and b.acquire(timeout=0)
    a.release()
    b.release()
