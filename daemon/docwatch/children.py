"""Starting and ending the child processes docwatch starts (the staging helper, the Dagster
events reader): both leave SIGINT and SIGTERM to the daemon, end at EOF on their input, and
get a kill when they do not."""

from __future__ import annotations

import signal
import subprocess

#: How long a child has to end after its input closes.
EOF_GRACE_SECONDS = 5.0
#: Signals a child ignores: systemd's stop sends SIGTERM to every process of the service's
#: cgroup, a Ctrl-C reaches a terminal's whole group; the daemon alone decides when a child ends.
LEFT_TO_THE_PARENT = frozenset({signal.SIGINT, signal.SIGTERM})


def start_child(command: list[str], **popen: object) -> subprocess.Popen:
    """``Popen(command)`` with ``LEFT_TO_THE_PARENT`` blocked in the child from its first
    instruction: one sent before the child ignores them (it does so first, then unblocks them)
    waits, and is then dropped, instead of killing it during its start."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, LEFT_TO_THE_PARENT)
    try:
        return subprocess.Popen(command, **popen)  # type: ignore[arg-type]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def end_at_eof(proc: subprocess.Popen) -> int:
    """Close the child's input, wait for it to end, kill it after ``EOF_GRACE_SECONDS``; its
    exit status (negative: the signal that ended it).  Its other pipes stay open."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:  # it is gone already: the buffered bytes had nowhere to go
        pass
    try:
        return proc.wait(EOF_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
