"""When a file the daemon was told about may be read (pure: no I/O, no clock, no threads).

* closed after writing, or renamed into place (inotify): complete now;
* created (inotify) and not closed yet: its close, however long its writer stalls mid-write
  (a loaded machine can stall it past ``settle_seconds``, and a partial read would be an
  extra attempt); only a hard link (nlink > 1, which no close follows), a close not seen
  within ``close_wait_seconds`` (``Policy.close_wait_s``), or lost events
  (``PendingTable.forget_creations``) fall back to the settle rule.  One still empty waits
  for its close ``EMPTY_CHECKS`` times, then is left to the reconcile pass;
* anything else (listed, polled, changed while read): the settle rule, as in ``scan``: read
  once its mtime is ``settle_seconds`` old.  A future mtime (clock skew, NFS) says nothing
  about age: such a file is read once it has been seen unchanged for ``settle_seconds``;
* a prompt or parsed file found by listing a folder just armed (written before the watch
  existed): the pipeline renames those into place, so it is complete once it stops changing
  for ``QUIET`` seconds (a raw file found so waits for its close, or the settle rule).

A parsed file never waits for the raw file of its task: the pipeline closes the raw before it
writes the parsed file, so the batch that reads a parsed file takes the raw files it proves
complete along (``batches.Batches.raws_behind``) and the two pair as a scan would pair them.
A closed raw file waits ``RAW_GRACE`` for that parsed file.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from docwatch.live.pending import Pending

#: An inotify-created file still empty: re-checks before it is left to the reconcile pass.
EMPTY_CHECKS = 5
#: A renamed-into-place kind found by listing: read once unchanged for this long (seconds).
QUIET = 0.1
#: A raw file ready (closed) waits this long for its parsed file, which the pipeline writes
#: right after it: read together they make one ``ok`` document, instead of a ``pending`` one
#: updated a moment later (the raw is not ``ok`` any sooner either way).
RAW_GRACE = 0.05


class Verdict(enum.Enum):
    READ = "read"
    WAIT = "wait"
    FORGET = "forget"  # gone, or left to the next reconcile pass


@dataclass(frozen=True)
class FileState:
    """What lstat says of a waiting path now (None fields: the stat failed)."""

    regular: bool
    size: int
    mtime_ns: int
    ino: int
    nlink: int

    @property
    def signature(self) -> tuple[int, int, int]:
        return (self.size, self.mtime_ns, self.ino)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    due: float = 0.0  # WAIT: when to look again (monotonic seconds)
    tries: int | None = None  # WAIT: the entry's new count of empty checks
    seen: tuple[int, int, int] | None = None  # WAIT on a future mtime: what it showed
    seen_at: float | None = None


@dataclass(frozen=True)
class Policy:
    settle_s: float
    close_wait_s: float


def decide(
    entry: Pending, state: FileState | None, *, now: float, now_ns: int, policy: Policy
) -> Decision:
    """What to do with a waiting path (``state`` None: the file is gone)."""
    if entry.ready and entry.role.kind == "raw" and now < entry.first + RAW_GRACE:
        return Decision(Verdict.WAIT, entry.first + RAW_GRACE)  # its parsed file may join
    if entry.ready:
        return Decision(Verdict.READ)
    if state is None:
        return Decision(Verdict.FORGET)
    settle = policy.settle_s
    if entry.quiet and state.regular and state.size > 0:  # renamed into place, listed late
        if entry.seen == state.signature and now - entry.seen_at >= QUIET:
            return Decision(Verdict.READ)
        if entry.seen == state.signature:
            return Decision(Verdict.WAIT, entry.seen_at + QUIET)
        return Decision(Verdict.WAIT, now + QUIET, seen=state.signature, seen_at=now)
    if entry.awaiting_close and state.regular and state.size == 0 and state.nlink == 1:
        if entry.tries >= EMPTY_CHECKS:
            return Decision(Verdict.FORGET)
        return Decision(Verdict.WAIT, now + max(settle, 0.1), tries=entry.tries + 1)
    close_wait = policy.close_wait_s
    if entry.awaits_close(now, close_wait) and state.regular and state.nlink == 1:  # its close
        return Decision(Verdict.WAIT, min(now + max(settle, 0.1), entry.first + close_wait))
    age_ns = now_ns - state.mtime_ns
    if age_ns < 0:  # a future mtime: settled once unchanged for settle_seconds
        if entry.seen == state.signature and now - entry.seen_at >= settle:
            return Decision(Verdict.READ)
        if entry.seen == state.signature:
            return Decision(Verdict.WAIT, entry.seen_at + settle + 0.01)
        return Decision(Verdict.WAIT, now + settle + 0.01, seen=state.signature, seen_at=now)
    if age_ns < settle * 1e9:
        return Decision(Verdict.WAIT, now + (settle * 1e9 - age_ns) / 1e9 + 0.01)
    return Decision(Verdict.READ)
