"""Paths waiting to be ingested by the daemon, one entry per path, ordered by due time.

The table also knows which tasks have a raw file waiting (``raws_of``): a parsed file takes
the ones it proves complete along (``batches.Batches.raws_behind``), so the two are read
together as a scan would read them.
"""

from __future__ import annotations

import heapq
import os
import time
from dataclasses import dataclass

from docwatch.core.layout import FolderRole, parse_name


@dataclass
class Pending:
    """A path waiting to be ingested."""

    path: str
    role: FolderRole
    task: tuple[str, str]  # (stage, task_id)
    due: float  # monotonic
    ready: bool  # complete now (close or rename seen); else the settle rule applies
    awaiting_close: bool  # inotify saw it created, or listed as a raw: no close yet
    first: float  # when it was first queued (bounds how long a parsed file is held)
    seq: int
    tries: int = 0
    #: A file with a future mtime: the (size, mtime_ns, ino) it last showed, and since when.
    seen: tuple[int, int, int] | None = None
    seen_at: float = 0.0
    #: Listed in a folder just armed, of a kind renamed into place: read once quiet.
    quiet: bool = False
    #: inotify saw it created (IN_CREATE): its writer's close (IN_CLOSE_WRITE) will come.
    created: bool = False

    def awaits_close(self, now: float, close_wait: float) -> bool:
        """Seen created and not closed, for less than ``close_wait`` seconds (past it, the
        close is taken as lost)."""
        return self.created and now - self.first < close_wait


class PendingTable:
    """Paths waiting to be ingested, one entry per path, ordered by due time; it also knows
    which tasks have a raw file waiting."""

    def __init__(self, roles: dict[str, FolderRole]) -> None:
        self.roles = roles
        self._entries: dict[str, Pending] = {}
        self._heap: list[tuple[float, int, str]] = []  # lazy: superseded items are skipped
        self._raws: dict[tuple[str, str], set[str]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(
        self,
        path: str,
        due: float,
        *,
        ready: bool = False,
        awaiting_close: bool = False,
        keep: bool = False,
        tries: int = 0,
        first: float | None = None,
        seen: tuple[int, int, int] | None = None,
        seen_at: float = 0.0,
        quiet: bool = False,
        created: bool = False,
    ) -> None:
        """Add a path, or merge into its entry (earliest due, ready wins); ``keep`` leaves an
        existing entry alone.  Paths outside the watched folders or not pipeline names are
        ignored."""
        old = self._entries.get(path)
        if old is not None:
            if keep:
                return
            role, task = old.role, old.task
            ready, due = ready or old.ready, min(due, old.due)
            first, tries = old.first if first is None else first, max(tries, old.tries)
            if seen is None:
                seen, seen_at = old.seen, old.seen_at
            quiet, created = quiet or old.quiet, created or old.created
        else:
            role = self.roles.get(os.path.dirname(path))
            name = parse_name(os.path.basename(path))
            if role is None or isinstance(name, str):
                return
            task = (role.stage, name.task_id)
        self._seq += 1
        self._entries[path] = Pending(
            path,
            role,
            task,
            due,
            ready,
            awaiting_close and not ready,
            time.monotonic() if first is None else first,
            self._seq,
            tries,
            seen,
            seen_at,
            quiet and not ready,
            created and not ready,
        )
        heapq.heappush(self._heap, (due, self._seq, path))
        if role.kind == "raw":
            self._raws.setdefault(task, set()).add(path)

    def _pop(self, path: str) -> Pending | None:
        entry = self._entries.pop(path, None)
        if entry is not None and entry.role.kind == "raw":
            raws = self._raws.get(entry.task, set())
            raws.discard(path)
            if not raws:
                self._raws.pop(entry.task, None)
        return entry

    def _current(self, item: tuple[float, int, str]) -> bool:
        entry = self._entries.get(item[2])
        return entry is not None and entry.seq == item[1]

    def next_due(self) -> float | None:
        while self._heap and not self._current(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def take_due(self, now: float, limit: int) -> list[Pending]:
        """Remove and return up to ``limit`` entries due at ``now``, earliest first."""
        out: list[Pending] = []
        while self._heap and self._heap[0][0] <= now and len(out) < limit:
            item = heapq.heappop(self._heap)
            if self._current(item):
                out.append(self._pop(item[2]))  # type: ignore[arg-type]
        return out

    def take_raws(self, task: tuple[str, str], paths: set[str]) -> list[Pending]:
        """Remove and return the waiting raw files of ``task`` among ``paths``."""
        return [e for p in sorted(self._raws.get(task, set()) & paths) if (e := self._pop(p))]

    def raws_of(self, task: tuple[str, str]) -> set[str]:
        return set(self._raws.get(task, ()))

    def forget_creations(self) -> None:
        """Events were lost (a queue overflow, a dead observer): the close a file seen created
        waits for may be among them, so the settle rule applies to it again."""
        for entry in self._entries.values():
            entry.created = False

    def closes_awaited(self, now: float, close_wait: float) -> set[str]:
        """The paths whose close is awaited (``Pending.awaits_close``; not the entries'
        ``awaiting_close`` field, which listed raws have too): a listing pass leaves them."""
        return {p for p, entry in self._entries.items() if entry.awaits_close(now, close_wait)}
