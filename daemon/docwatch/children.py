"""Ending the child processes docwatch starts (the scan's staging helper, the Dagster events
reader): both end at EOF on their input, and get a kill when they do not."""

from __future__ import annotations

import subprocess

#: How long a child has to end after its input closes.
EOF_GRACE_SECONDS = 5.0


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
