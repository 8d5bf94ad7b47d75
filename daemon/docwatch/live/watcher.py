"""``docwatch watch``: the live daemon.  It only decides *when* a file is ready; the
``Indexer`` (shared with ``scan``) reads, plans, writes and commits.

Start-up: take the daemon lock, recover a dead writer's leftovers, start the observer on every
source folder (``events.WatchSet``), *then* run the catch-up (``scan.catch_up``) so nothing
falls between them, and only then send ``READY=1``.

Live: the observer's handler only enqueues ``(path, kind)``.  The main thread drains that
queue into the ``PendingTable`` and writes what ``readiness.decide`` finds ready in group
commits (up to ``batch_max_files`` paths, or ``batch_max_delay`` after the first one).

Never blocked for more than a few seconds, so the systemd watchdog stays fed: run records are
read on a thread of their own (``run_facts``), and re-plans (task tables rewritten, pending
raws expired, run records arrived) go one chunk of tasks per turn of the loop.

Safety nets: inotify queue overflow (watchdog logs it; ``events.OverflowDetector``) and a dead
observer thread (checked every second; the observer is rebuilt) trigger a full rescan; a
deleted, replaced or late-created folder is re-watched and listed; a reconcile pass (the
catch-up again) runs every ``reconcile_interval``.

Lifecycle: SIGTERM/SIGINT finish the batch in hand, send ``STOPPING=1``, stop the observer,
close the index and return (exit 0); a second signal exits at once (``signals.py``).
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from docwatch.config import Config
from docwatch.core.layout import STAGES, folder_roles, parse_name
from docwatch.errors import DocwatchError
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.ingestor import BatchReport
from docwatch.ingest.scan import catch_up, list_candidates
from docwatch.ingest.sources import Candidate, list_folder
from docwatch.live.events import (
    CREATED,
    DIRS,
    READY,
    WAKE,
    EnqueueHandler,
    OverflowDetector,
    WatchSet,
    role_dirs,
)
from docwatch.live.pending import Pending, PendingTable
from docwatch.live.readiness import FileState, Policy, Verdict, decide
from docwatch.live.sdnotify import Notifier
from docwatch.live.signals import SignalHandling
from docwatch.live.timers import Timers
from docwatch.store.locks import claim_daemon

log = logging.getLogger("docwatch.watch")

DEFAULT_RUN_ID = "watch"
SUPERVISE_EVERY = 1.0  # observer / emitter / folder checks
STATUS_EVERY = 5.0  # STATUS= to systemd
TABLES_EVERY = 1.0  # task-table change check (also after every batch)
RETRY_DELAY = 0.25  # a file that changed while being read is looked at again after this
FAILED_DELAY = 5.0  # a task whose batch failed unexpectedly: first retry, doubling to 5 min
MAX_TICK = 0.5  # the main loop wakes at least this often (stop flag, timers)
RAW_LOOKAHEAD = 3  # raw versions past the last indexed one that a parsed file may pull in


class LiveRunFacts(Protocol):
    """The run records as the daemon uses them (``dagster.runrecords.LiveRecords``)."""

    def step(self, indexer: Indexer) -> None:
        """Take what the reader thread fetched; queue the re-plans it calls for."""

    def close(self) -> None: ...


#: Opens the run records for the daemon: (indexer, wake) → LiveRunFacts, or None.
LiveRunFactsOpener = Callable[[Indexer, Callable[[], None]], "LiveRunFacts | None"]


class _Stopping(Exception):
    """Raised from the backoff sleep when a stop was requested (the batch is not committed)."""


class Watcher:
    """The daemon.  ``run()`` blocks until ``stop()`` (or a signal); tests run it in a thread."""

    def __init__(
        self,
        cfg: Config,
        *,
        run_id: str | None = None,
        notifier: Notifier | None = None,
        run_facts: LiveRunFactsOpener | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_id = run_id or cfg.run_id or DEFAULT_RUN_ID
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.run_facts_opener = run_facts
        self.polling = cfg.observer == "polling"
        self.data_root = Path(os.path.abspath(cfg.data_root))
        self.roles = role_dirs(self.data_root, folder_roles(cfg.folders))
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.stop_requested = threading.Event()
        self.ready = threading.Event()
        self.rescan_needed = threading.Event()
        self.watches = WatchSet(
            self.roles, self._make_handler, polling=self.polling, poll_interval=cfg.poll_interval
        )
        self.overflow = OverflowDetector(self.rescan_needed, self.wake)
        self.stats: Counter = Counter()
        self.indexer: Indexer | None = None
        self.run_facts: LiveRunFacts | None = None
        self.pending = PendingTable(self.roles)
        self.raw_dirs: dict[str, list] = defaultdict(list)
        for folder, role in self.roles.items():
            if role.kind == "raw":
                self.raw_dirs[role.stage].append((folder, role))
        self.policy = Policy(cfg.settle_seconds, hold_max_s=max(4 * cfg.settle_seconds, 10.0))
        self._batch_open: float | None = None
        self._arm_needed = False
        self._last_batch: tuple[int, float] | None = None
        self.loop_turns = 0  # main-loop wake-ups (an idle daemon sleeps between timers)
        self.longest_turn = 0.0  # seconds: the longest stretch the loop spent in one turn
        self._watchdog_every = self.notifier.watchdog_interval()
        self._next_ping = 0.0
        self._failed: dict[str, float] = {}  # path → current retry delay after failures

    # -- public --------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to finish the batch in hand and return from ``run()``."""
        self.stop_requested.set()
        self.wake()

    def wake(self) -> None:
        self.events.put((None, WAKE))  # SimpleQueue.put is safe from signal handlers

    def run(self, *, install_signals: bool = False) -> None:
        lock = claim_daemon(self.cfg.db)
        try:
            if install_signals:
                with SignalHandling(self.stop):
                    self._run_guarded()
            else:
                self._run_guarded()
        finally:
            lock.release()

    # -- lifecycle -----------------------------------------------------------------------

    def _run_guarded(self) -> None:
        try:
            self.indexer = Indexer(
                self.cfg, self.run_id, sleep=self._sleep, live_since_ns=time.time_ns()
            )
            self._run()
        except _Stopping:
            log.info("stop requested during a retry; the unfinished batch is redone next start")
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        log.info("stopping (a second SIGTERM/SIGINT exits at once)")
        self.notifier.stopping()
        self.watches.stop()
        self.overflow.uninstall()
        if self.run_facts is not None:
            self.run_facts.close()
        if self.indexer is not None:
            self.indexer.close()
        self.notifier.close()
        log.info("stopped: %s", self._status_text())

    def _run(self) -> None:
        assert self.indexer is not None
        started = time.monotonic()
        self.indexer.recover()
        if self.run_facts_opener is not None:
            self.run_facts = self.run_facts_opener(self.indexer, self.wake)
        self.overflow.install()
        self.watches.start()  # observer first, then the catch-up: nothing falls between
        self._catch_up("start-up")
        if self.stop_requested.is_set():
            return
        log.info(
            "watching %d of %d folders (%s); catch-up took %.1fs: %s",
            len(self.watches.watched_targets),
            len(self.roles),
            "polling" if self.polling else "inotify",
            time.monotonic() - started,
            self._status_text(),
        )
        self.notifier.ready(self._status_text())
        self.ready.set()
        self._loop()

    # -- the main loop -------------------------------------------------------------------

    def _loop(self) -> None:
        cfg = self.cfg
        timers = Timers(
            time.monotonic(),
            {
                "supervise": SUPERVISE_EVERY,
                "status": STATUS_EVERY,
                "tables": TABLES_EVERY,
                "expire": max(0.5, min(cfg.pair_window / 10, 30.0)),
                "reconcile": cfg.reconcile_interval,
            },
        )
        while not self.stop_requested.is_set():
            self.loop_turns += 1
            now = time.monotonic()
            self._pump(max(0.0, self._wake_at(timers, now) - now))
            if self.stop_requested.is_set():
                break
            turn_started = time.monotonic()
            self._turn(timers)
            self.longest_turn = max(self.longest_turn, time.monotonic() - turn_started)

    def _wake_at(self, timers: Timers, now: float) -> float:
        wake_at = min(timers.next_deadline(), now + MAX_TICK)
        if (first_due := self.pending.next_due()) is not None:
            if self._batch_open is not None:
                first_due = max(first_due, self._batch_open + self.cfg.batch_max_delay)
            wake_at = min(wake_at, first_due)
        if self._watchdog_every:
            wake_at = min(wake_at, self._next_ping)
        if self.indexer is not None and self.indexer.has_queued():
            wake_at = now  # re-plans wait: one chunk per turn
        return wake_at

    def _turn(self, timers: Timers) -> None:
        """One turn: each step is bounded (a batch, a chunk of re-plans, a timer's job)."""
        assert self.indexer is not None
        self._ping()
        if self.rescan_needed.is_set():
            self.rescan_needed.clear()
            log.warning("inotify queue overflowed (events were lost); rescanning every folder")
            self.stats["rescans"] += 1
            self._arm()
            self._catch_up("overflow")
        if self._arm_needed:
            self._arm()
        self._maybe_batch()
        if self.run_facts is not None:
            self.run_facts.step(self.indexer)
        if self.indexer.has_queued():
            self._account(self.indexer.ingest([]), 0)
        for name in timers.due(time.monotonic()):
            if name == "supervise":
                self._supervise()
            elif name == "tables":
                self.indexer.tables()  # queues the tasks a rewrite made stale
            elif name == "expire":
                self.indexer.expire_pending()
            elif name == "reconcile":
                self.stats["reconciles"] += 1
                self._arm()
                self._catch_up("reconcile")
                timers.rearm("reconcile", time.monotonic())
            elif name == "status":
                self.notifier.status(self._status_text())

    def _pump(self, timeout: float) -> None:
        """Move queued events into the pending table; wait up to ``timeout`` for the first."""
        try:
            item = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            self._on_event(*item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return

    def _on_event(self, path: str | None, kind: str) -> None:
        if kind == WAKE or path is None:
            return
        if kind == DIRS:
            self._arm_needed = True
            return
        now = time.monotonic()
        if kind == READY:
            self.pending.put(path, now, ready=True)
        elif kind == CREATED:
            self.pending.put(path, now + self.cfg.settle_seconds, awaiting_close=True, keep=True)
        else:  # CHANGED (polling): the settle rule
            self.pending.put(path, now)

    def _ping(self) -> None:
        if self._watchdog_every and time.monotonic() >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = time.monotonic() + self._watchdog_every

    def _between_batches(self) -> None:
        """Between the batches of a long pass: feed the watchdog, honour a stop."""
        self._ping()
        if not self.ready.is_set():
            self.notifier.extend_timeout(120)

    def _sleep(self, seconds: float) -> None:
        """The indexer's backoff sleep: keeps the watchdog fed and gives way to a stop."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.stop_requested.wait(min(left, MAX_TICK)):
                raise _Stopping
            self._ping()

    # -- batches ---------------------------------------------------------------------------

    def _maybe_batch(self) -> None:
        """Group commit: ingest what is due once ``batch_max_delay`` has passed since the first
        path became due, or at once when ``batch_max_files`` are waiting."""
        now = time.monotonic()
        first_due = self.pending.next_due()
        if first_due is None or first_due > now:
            return
        if self._batch_open is None:
            self._batch_open = now
        full = len(self.pending) >= self.cfg.batch_max_files
        if not full and now - self._batch_open < self.cfg.batch_max_delay:
            return
        self._batch_open = None
        entries = self.pending.take_due(now, self.cfg.batch_max_files)
        if entries:
            self._ingest_entries(entries)

    def _ingest_entries(self, entries: list[Pending]) -> None:
        """Apply the readiness policy to each entry; ingest what is ready."""
        now, now_ns = time.monotonic(), time.time_ns()
        cands: list[Candidate] = []
        for e in entries:
            state = _file_state(e.path)
            d = decide(
                e,
                state,
                now=now,
                now_ns=now_ns,
                policy=self.policy,
                raw_waiting=self.pending.raw_pending(e.task),
            )
            if d.verdict is Verdict.WAIT:
                self._requeue(e, d.due, tries=d.tries, seen=d.seen, seen_at=d.seen_at)
            elif d.verdict is Verdict.READ:
                relpath = f"{e.role.folder}/{os.path.basename(e.path)}"
                cands.append(Candidate(Path(e.path), e.role, relpath))
        if cands:
            self._ingest(cands + self._raws_behind(cands))

    def _raws_behind(self, cands: list[Candidate]) -> list[Candidate]:
        """Raw files that a parsed file in this batch proves complete, though their own close
        event has not arrived yet (each folder has its own emitter thread, so events of two
        folders can come out of order).  The pipeline closes the raw before it writes the
        parsed file, so a raw of the task's next versions with an mtime no later than the
        parsed file's is complete: ingesting both together pairs them as a scan would, instead
        of indexing the parsed file alone and superseding that document a moment later."""
        assert self.indexer is not None
        queued = {str(c.path) for c in cands}
        extra: list[Candidate] = []
        for c in cands:
            name = parse_name(c.path.name)
            if c.role.kind != "parsed" or isinstance(name, str):
                continue
            try:
                parsed_mtime = os.lstat(c.path).st_mtime_ns
            except OSError:
                continue
            first = self.indexer.index.max_raw_version(c.role.stage, name.task_id) + 1
            for folder, role in self.raw_dirs.get(c.role.stage, ()):
                for version in range(first, first + RAW_LOOKAHEAD):
                    path = os.path.join(folder, f"{name.task_id}_v{version}.txt")
                    try:
                        st = os.lstat(path)
                    except OSError:
                        break
                    if (
                        stat.S_ISREG(st.st_mode)
                        and st.st_mtime_ns <= parsed_mtime
                        and path not in queued
                    ):
                        queued.add(path)
                        relpath = f"{role.folder}/{os.path.basename(path)}"
                        extra.append(Candidate(Path(path), role, relpath))
        return extra

    def _requeue(self, e: Pending, due: float, *, tries=None, seen=None, seen_at=None) -> None:
        self.pending.put(
            e.path,
            due,
            ready=e.ready,
            awaiting_close=e.awaiting_close,
            tries=e.tries if tries is None else tries,
            first=e.first,
            seen=seen,
            seen_at=seen_at or 0.0,
        )

    def _ingest(self, cands: list[Candidate]) -> None:
        """One batch; should it fail unexpectedly, each task is retried on its own so one bad
        task never holds the others back."""
        assert self.indexer is not None
        try:
            report = self.indexer.ingest(cands, ready=True)
        except (_Stopping, DocwatchError):
            raise
        except Exception as exc:  # bad input must not stop the daemon
            groups = _by_task(cands)
            if len(groups) == 1:
                self._retry_later(cands, exc)
                return
            for group in groups:
                self._ingest(group)
            return
        for c in cands:
            self._failed.pop(str(c.path), None)
        self._account(report, len(cands))

    def _retry_later(self, cands: list[Candidate], exc: BaseException) -> None:
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

    def _account(self, report: BatchReport, files: int) -> None:
        now = time.monotonic()
        for c in report.retry:  # deferred: young, changed while read, held; settle rule
            self.pending.put(str(c.path), now + RETRY_DELAY)
        for (_, outcome), n in report.counts.items():  # new, indexed, …, docs_created/updated
            self.stats[outcome] += n
        if files:
            self.stats["batches"] += 1
            self._last_batch = (files, time.monotonic())

    def _catch_up(self, why: str) -> None:
        """List every folder and ingest what is new, like ``scan`` (settle rule applies)."""
        assert self.indexer is not None
        started = time.monotonic()
        cands = list_candidates(self.cfg, STAGES)
        before = self.stats["docs_created"] + self.stats["docs_updated"]
        done = [0]

        def add(report: BatchReport) -> None:
            self._account(report, 0)

        def between() -> None:
            self._between_batches()
            if not self.ready.is_set():
                done[0] += self.cfg.batch_max_files
                self.notifier.status(f"catching up: {min(done[0], len(cands))}/{len(cands)} files")

        catch_up(
            self.indexer,
            cands,
            add,
            between=between,
            stop=self.stop_requested.is_set,
            settle_future=False,  # the pending table watches them settle
        )
        changed = self.stats["docs_created"] + self.stats["docs_updated"] - before
        level = logging.INFO if why == "start-up" or changed else logging.DEBUG
        log.log(
            level,
            "%s pass: %d files listed, %d documents written, %.2fs",
            why,
            len(cands),
            changed,
            time.monotonic() - started,
        )

    def _arm(self) -> None:
        self._arm_needed = False
        for target in self.watches.arm():
            log.info("watching %s", target)
            role = self.roles[target]
            now = time.monotonic()
            try:
                for c in list_folder(self.data_root, role):  # files from before the watch
                    self.pending.put(str(c.path), now)
            except OSError as exc:  # unreadable now: the reconcile pass lists it again
                log.warning("cannot list %s (%s); the next reconcile retries", target, exc)

    def _supervise(self) -> None:
        problem = self.watches.health()
        if problem:
            log.error("%s; rebuilding the observer and rescanning", problem)
            self.watches.rebuild()
            self.stats["rebuilds"] += 1
            self._catch_up("rebuild")
            return
        self._arm()  # re-watches deleted, replaced or newly created folders

    def _status_text(self) -> str:
        s = self.stats
        text = (
            f"{s['docs_created']} documents created, {s['docs_updated']} updated, "
            f"{len(self.pending) + self.events.qsize()} queued"
        )
        if self._last_batch:
            files, at = self._last_batch
            text += f", last batch {files} files {time.monotonic() - at:.0f}s ago"
        if s["error"]:
            text += f", {s['error']} files with errors"
        return text

    def _make_handler(self) -> EnqueueHandler:
        return EnqueueHandler(self.events, self.roles, polling=self.polling)


def _file_state(path: str) -> FileState | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:  # unreadable: read it now, and the probe reports why
        return FileState(True, 1, 0, 0, 1)
    return FileState(stat.S_ISREG(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino, st.st_nlink)


def _by_task(cands: list[Candidate]) -> list[list[Candidate]]:
    groups: dict = defaultdict(list)
    for c in cands:
        groups[c.task or c.relpath].append(c)
    return list(groups.values())


def run_watch(
    cfg: Config, *, run_id: str | None = None, run_facts: LiveRunFactsOpener | None = None
) -> None:
    """The CLI entry: run until SIGTERM/SIGINT, with signal handlers installed."""
    Watcher(cfg, run_id=run_id, run_facts=run_facts).run(install_signals=True)
