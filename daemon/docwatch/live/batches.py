"""The daemon's group commits: what is due in the pending table, through the readiness policy,
into one batch; raws a parsed file proves complete ride along; an unexpected failure is
retried task by task, so one bad task never holds the others back."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import Counter, defaultdict
from pathlib import Path

from docwatch.config import Config
from docwatch.core.layout import FolderRole, parse_name
from docwatch.errors import DocwatchError
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.ingestor import BatchReport
from docwatch.ingest.sources import Candidate, Stat
from docwatch.live.pending import Pending, PendingTable
from docwatch.live.readiness import FileState, Policy, Verdict, decide

log = logging.getLogger("docwatch.watch")

RETRY_DELAY = 0.25  # a file that changed while being read is looked at again after this
FAILED_DELAY = 5.0  # a task whose batch failed unexpectedly: first retry, doubling to 5 min
RAW_LOOKAHEAD = 3  # raw versions past the last indexed one that a parsed file may pull in


class Batches:
    """Turns due entries of the pending table into ingest batches for one indexer."""

    def __init__(
        self,
        cfg: Config,
        pending: PendingTable,
        roles: dict[str, FolderRole],
        stats: Counter,
        passthrough: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.cfg = cfg
        self.pending = pending
        self.stats = stats
        self.passthrough = (DocwatchError, *passthrough)  # raised, never retried
        self.policy = Policy(cfg.settle_seconds, cfg.close_wait_seconds)
        self.raw_dirs: dict[str, list[tuple[str, FolderRole]]] = defaultdict(list)
        for folder, role in roles.items():
            if role.kind == "raw":
                self.raw_dirs[role.stage].append((folder, role))
        self.indexer: Indexer | None = None
        self.opened_at: float | None = None  # when the first due path of this batch was seen
        self.last: tuple[int, float] | None = None  # (files, monotonic) of the last batch
        self._failed: dict[str, float] = {}  # path → current retry delay after failures

    def due_at(self) -> float | None:
        """When the next batch may run (None: nothing waits)."""
        first_due = self.pending.next_due()
        if first_due is not None and self.opened_at is not None:
            first_due = max(first_due, self.opened_at + self.cfg.batch_max_delay)
        return first_due

    def maybe_run(self) -> None:
        """Group commit: ingest what is due once ``batch_max_delay`` has passed since the first
        path became due, or at once when ``batch_max_files`` are waiting."""
        now = time.monotonic()
        first_due = self.pending.next_due()
        if first_due is None or first_due > now:
            return
        if self.opened_at is None:
            self.opened_at = now
        full = len(self.pending) >= self.cfg.batch_max_files
        if not full and now - self.opened_at < self.cfg.batch_max_delay:
            return
        self.opened_at = None
        entries = self.pending.take_due(now, self.cfg.batch_max_files)
        if entries:
            self.run(entries)

    def run(self, entries: list[Pending]) -> None:
        """Apply the readiness policy to each entry; ingest what is ready."""
        now, now_ns = time.monotonic(), time.time_ns()
        cands: list[Candidate] = []
        for e in entries:
            st, state = observe(e.path)
            d = decide(e, state, now=now, now_ns=now_ns, policy=self.policy)
            if d.verdict is Verdict.WAIT:
                self.pending.put(
                    e.path,
                    d.due,
                    ready=e.ready,
                    awaiting_close=e.awaiting_close,
                    tries=e.tries if d.tries is None else d.tries,
                    first=e.first,
                    seen=d.seen,
                    seen_at=d.seen_at or 0.0,
                    quiet=e.quiet,
                    created=e.created,
                )
            elif d.verdict is Verdict.READ:
                relpath = f"{e.role.folder}/{os.path.basename(e.path)}"
                lstat = None if st is None else Stat.of(st)  # the probe needs no second lstat
                cands.append(Candidate(Path(e.path), e.role, relpath, lstat))
        if cands:
            self.ingest(cands + self.raws_behind(cands))

    def raws_behind(self, cands: list[Candidate]) -> list[Candidate]:
        """Raw files that a parsed file in this batch proves complete, though their own close
        event has not arrived yet (each folder has its own emitter thread, so events of two
        folders can come out of order) or they wait for the settle rule.  The pipeline closes
        the raw before it writes the parsed file, so a raw of the task (waiting here, or among
        the task's next versions on disk) with an mtime no later than the parsed file's is
        complete: ingesting both together pairs them as a scan would, instead of indexing the
        parsed file alone and superseding that document a moment later."""
        assert self.indexer is not None
        queued = {str(c.path) for c in cands}
        extra: list[Candidate] = []
        parsed = [
            (c, name)
            for c in cands
            if c.role.kind == "parsed" and not isinstance(name := parse_name(c.path.name), str)
        ]
        indexed = self.indexer.index.max_raw_versions((c.role.stage, n.task_id) for c, n in parsed)
        for c, name in parsed:
            task = (c.role.stage, name.task_id)
            try:
                parsed_mtime = (c.lstat or os.lstat(c.path)).st_mtime_ns
            except OSError:
                continue
            complete = set()
            for path in self.pending.raws_of(task) - queued:  # waiting here: close or settle
                st = file_state(path)
                if st is not None and st.regular and st.mtime_ns <= parsed_mtime:
                    complete.add(path)
            for e in self.pending.take_raws(task, complete):
                queued.add(e.path)
                relpath = f"{e.role.folder}/{os.path.basename(e.path)}"
                extra.append(Candidate(Path(e.path), e.role, relpath))
            first = indexed.get(task, 0) + 1
            for folder, role in self.raw_dirs.get(c.role.stage, ()):
                for version in range(first, first + RAW_LOOKAHEAD):
                    path = os.path.join(folder, f"{name.task_id}_v{version}.txt")
                    try:
                        st = os.lstat(path)
                    except OSError:
                        break
                    complete = stat.S_ISREG(st.st_mode) and st.st_mtime_ns <= parsed_mtime
                    if complete and path not in queued:
                        queued.add(path)
                        relpath = f"{role.folder}/{os.path.basename(path)}"
                        extra.append(Candidate(Path(path), role, relpath))
        return extra

    def ingest(self, cands: list[Candidate]) -> None:
        """One batch; should it fail unexpectedly, each task is retried on its own so one bad
        task never holds the others back."""
        assert self.indexer is not None
        try:
            report = self.indexer.ingest(cands, ready=True)
        except self.passthrough:
            raise
        except Exception as exc:  # bad input must not stop the daemon
            groups = by_task(cands)
            if len(groups) == 1:
                self.retry_later(cands, exc)
                return
            for group in groups:
                self.ingest(group)
            return
        for c in cands:
            self._failed.pop(str(c.path), None)
        self.account(report, len(cands))

    def retry_later(self, cands: list[Candidate], exc: BaseException) -> None:
        self.stats["batch_failures"] += 1
        delay = min(max(self._failed.get(str(c.path), 0.0) for c in cands) * 2, 300.0)
        delay = delay or FAILED_DELAY
        log.exception(
            "%d files of one task failed (%r); retrying them in %.0fs: %s",
            len(cands),
            exc,
            delay,
            ", ".join(c.relpath for c in cands[:5]),
        )
        due = time.monotonic() + delay
        for c in cands:
            self._failed[str(c.path)] = delay
            self.pending.put(str(c.path), due)

    def account(self, report: BatchReport, files: int) -> None:
        """Count a batch's outcomes; what it deferred goes back to the table."""
        now = time.monotonic()
        for c in report.retry:  # deferred: young, changed while read, held; settle rule
            self.pending.put(str(c.path), now + RETRY_DELAY)
        for (_, outcome), n in report.counts.items():  # new, indexed, …, docs_created/updated
            self.stats[outcome] += n
        if files:
            self.stats["batches"] += 1
            self.last = (files, time.monotonic())


def observe(path: str) -> tuple[os.stat_result | None, FileState | None]:
    """One lstat of ``path``: the stat (None when it failed, for the probe to take again) and
    what the readiness rules see (None: the file is gone)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    except OSError:  # unreadable: read it now, and the probe reports why
        return None, FileState(True, 1, 0, 0, 1)
    regular = stat.S_ISREG(st.st_mode)
    return st, FileState(regular, st.st_size, st.st_mtime_ns, st.st_ino, st.st_nlink)


def file_state(path: str) -> FileState | None:
    """What the readiness rules see of ``path``."""
    return observe(path)[1]


def by_task(cands: list[Candidate]) -> list[list[Candidate]]:
    groups: dict = defaultdict(list)
    for c in cands:
        groups[c.task or c.relpath].append(c)
    return list(groups.values())
