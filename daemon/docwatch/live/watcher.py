"""``docwatch watch``: the live daemon.  It only decides *when* a file is ready; the
``Indexer`` (shared with ``scan``) reads, plans, writes and commits.

Start-up: take the daemon lock, recover a dead writer's leftovers, start the observer on every
source folder (``events.WatchSet``), *then* run the catch-up (the scan's listing and batches)
so nothing falls between them, and only then send ``READY=1``.

Live: the observer's handler only enqueues ``(path, kind)``.  The main thread drains that
queue into a table of pending paths and writes them in group commits (up to
``batch_max_files`` paths, or ``batch_max_delay`` after the first one).  Readiness:

* closed after writing or renamed into place (inotify): read now;
* anything else (created without a close yet, a folder listed after its watch was added,
  polling, a file that changed while it was read): the settle rule, as in ``scan``: read
  once its mtime is ``settle_seconds`` old (an inotify-created file that is still empty keeps
  waiting for its close event);
* a parsed file waits while a raw file of the same task is still pending here, so a raw
  written just before it is paired as a scan of the finished tree would pair it.

Safety nets: inotify queue overflow (watchdog logs it; ``events.OverflowDetector``) and a dead
observer thread (checked every second; the observer is rebuilt) trigger a full rescan; a
deleted, replaced or late-created folder is re-watched and listed; a reconcile pass (the
catch-up again, plus expiring pending raws) runs every ``reconcile_interval``; pending raws get
their final status within ``min(pair_window / 10, 30 s)`` of the window's end; when the task
tables change, the documents whose task facts changed are re-planned.

Lifecycle: SIGTERM/SIGINT finish the batch in hand, send ``STOPPING=1``, stop the observer,
close the index and return (exit 0); a second signal exits at once with ``128 + signal``
(safe: a batch is all-or-nothing, and the next start recovers).  sd_notify: ``READY=1``,
``STATUS=`` every few seconds, ``WATCHDOG=1`` from the main loop, ``STOPPING=1``.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sqlite3
import stat
import threading
import time
from collections import Counter
from pathlib import Path

from docwatch.config import Config
from docwatch.core.layout import STAGES, folder_roles, parse_name
from docwatch.dagster import runrecords
from docwatch.errors import DocwatchError
from docwatch.ingest.batch import BatchReport
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.scan import list_candidates, missing_document_tasks, task_batches
from docwatch.ingest.sources import Candidate, list_folder
from docwatch.live.events import (
    CREATED,
    DIRS,
    READY,
    WAKE,
    EnqueueHandler,
    OverflowDetector,
    Pending,
    PendingTable,
    WatchSet,
    role_dirs,
)
from docwatch.live.sdnotify import Notifier
from docwatch.store import index as ix
from docwatch.store.locks import claim_daemon

log = logging.getLogger("docwatch.watch")

DEFAULT_RUN_ID = "watch"
SUPERVISE_EVERY = 1.0  # observer / emitter / folder checks
STATUS_EVERY = 5.0  # STATUS= to systemd
TABLES_EVERY = 1.0  # task-table change check (also after every batch)
RETRY_DELAY = 0.25  # a file that changed while being read is looked at again after this
EMPTY_CHECKS = 5  # an inotify-created file still empty: re-checks before leaving it to reconcile
MAX_TICK = 0.5  # the main loop wakes at least this often (stop flag, timers)
RAW_LOOKAHEAD = 3  # raw versions past the last indexed one that a parsed file may pull in


def _ignore(signum, frame) -> None:
    """Python-level no-op: the signal thread acts on the wakeup fd's byte instead."""


class _Stopping(Exception):
    """Raised from the backoff sleep when a stop was requested (the batch is not committed)."""


class Watcher:
    """The daemon.  ``run()`` blocks until ``stop()`` (or a signal); tests run it in a thread."""

    def __init__(
        self, cfg: Config, *, run_id: str | None = None, notifier: Notifier | None = None
    ) -> None:
        self.cfg = cfg
        self.run_id = run_id or cfg.run_id or DEFAULT_RUN_ID
        self.notifier = notifier if notifier is not None else Notifier.from_env()
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
        self.records: runrecords.RunRecords | None = None
        self.pending = PendingTable(self.roles)
        self.raw_dirs: dict[str, list] = {}
        for folder, role in self.roles.items():
            if role.kind == "raw":
                self.raw_dirs.setdefault(role.stage, []).append((folder, role))
        self._batch_open: float | None = None
        self._arm_needed = False
        self._last_batch: tuple[int, float] | None = None
        self._signals: int = 0
        self._restore_signals: tuple[int, int] | None = None
        self.loop_turns = 0  # main-loop wake-ups (an idle daemon sleeps between timers)
        self._watchdog_every = self.notifier.watchdog_interval()
        self._next_ping = 0.0
        self.hold_max = max(4 * cfg.settle_seconds, 10.0)

    # -- public --------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to finish the batch in hand and return from ``run()``."""
        self.stop_requested.set()
        self.wake()

    def wake(self) -> None:
        self.events.put((None, WAKE))  # SimpleQueue.put is safe from signal handlers

    def run(self, *, install_signals: bool = False) -> None:
        lock = claim_daemon(self.cfg.db)
        old = self._install_signals() if install_signals else {}
        try:
            self.indexer = Indexer(self.cfg, self.run_id, sleep=self._sleep)
            try:
                self._run()
            except _Stopping:
                log.info("stop requested during a retry; the unfinished batch is redone next start")
            finally:
                self._shutdown()
        finally:
            for signum, handler in old.items():
                signal.signal(signum, handler)
            if self._restore_signals is not None:
                old_wakeup, write_fd = self._restore_signals
                signal.set_wakeup_fd(old_wakeup)
                os.close(write_fd)  # ends the signal thread
            lock.release()

    # -- lifecycle -----------------------------------------------------------------------

    def _install_signals(self) -> dict:
        """Signals are read by a thread from the wakeup fd, so they count even while the main
        thread is blocked inside a C call (SQLite waiting on a lock, a slow fsync)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        old = {signum: signal.signal(signum, _ignore) for signum in (signal.SIGTERM, signal.SIGINT)}
        old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(
            target=self._signal_loop, args=(read_fd,), name="docwatch-signals", daemon=True
        ).start()
        self._restore_signals = (old_wakeup, write_fd)
        return old

    def _signal_loop(self, read_fd: int) -> None:
        while data := os.read(read_fd, 64):
            for signum in data:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self._on_signal(signum, None)
        os.close(read_fd)

    def _on_signal(self, signum, frame) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(128 + signum)  # second signal: at once (batches are all-or-nothing)
        self.stop()

    def _shutdown(self) -> None:
        log.info("stopping (a second SIGTERM/SIGINT exits at once)")
        self.notifier.stopping()
        self.watches.stop()
        self.overflow.uninstall()
        if self.records is not None:
            self.records.close()
        if self.indexer is not None:
            self.indexer.close()
        self.notifier.close()
        log.info("stopped: %s", self._status_text())

    def _run(self) -> None:
        assert self.indexer is not None
        started = time.monotonic()
        self.indexer.recover()
        self.records = runrecords.attach(self.indexer, self.cfg)
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
        now = time.monotonic()
        timers = {
            "supervise": now + SUPERVISE_EVERY,
            "status": now + STATUS_EVERY,
            "tables": now + TABLES_EVERY,
            "expire": now + max(0.5, min(cfg.pair_window / 10, 30.0)),
            "reconcile": now + cfg.reconcile_interval,
            "records": now + runrecords.POLL_EVERY,
        }
        while not self.stop_requested.is_set():
            self.loop_turns += 1
            now = time.monotonic()
            wake_at = min([*timers.values(), now + MAX_TICK])
            if (first_due := self.pending.next_due()) is not None:
                if self._batch_open is not None:
                    first_due = max(first_due, self._batch_open + cfg.batch_max_delay)
                wake_at = min(wake_at, first_due)
            if self._watchdog_every:
                wake_at = min(wake_at, self._next_ping)
            self._pump(max(0.0, wake_at - now))
            if self.stop_requested.is_set():
                break
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
            now = time.monotonic()
            if now >= timers["supervise"]:
                timers["supervise"] = now + SUPERVISE_EVERY
                self._supervise()
            if now >= timers["tables"]:
                timers["tables"] = now + TABLES_EVERY
                self._check_tables()
            if now >= timers["expire"]:
                timers["expire"] = now + max(0.5, min(cfg.pair_window / 10, 30.0))
                self._expire()
            if now >= timers["reconcile"]:
                self.stats["reconciles"] += 1
                self._arm()
                self._catch_up("reconcile")
                timers["reconcile"] = time.monotonic() + cfg.reconcile_interval
            if now >= timers["records"]:  # re-armed even without records: no busy loop
                timers["records"] = now + runrecords.POLL_EVERY
                if self.records is not None:
                    self._account(runrecords.refresh(self.indexer, self.records), 0)
            if now >= timers["status"]:
                timers["status"] = now + STATUS_EVERY
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

    # -- ingesting -----------------------------------------------------------------------

    def _ingest_entries(self, entries: list[Pending]) -> None:
        """Apply readiness, the settle rule and the raw-before-parsed hold; ingest the rest."""
        now, now_ns = time.monotonic(), time.time_ns()
        settle_ns = int(self.cfg.settle_seconds * 1e9)
        cands: list[Candidate] = []
        for e in entries:
            relpath = f"{e.role.folder}/{os.path.basename(e.path)}"
            if (
                e.role.kind == "parsed"
                and self.pending.raw_pending(e.task)
                and now - e.first < self.hold_max
            ):
                self._requeue(e, now + 0.1)
                continue
            if e.ready:
                cands.append(Candidate(Path(e.path), e.role, relpath))
                continue
            try:
                st = os.lstat(e.path)
            except FileNotFoundError:
                continue  # gone before it settled (a .tmp renamed away, a deleted file)
            except OSError:
                cands.append(Candidate(Path(e.path), e.role, relpath))  # probe reports it
                continue
            if (
                e.awaiting_close
                and stat.S_ISREG(st.st_mode)
                and st.st_size == 0
                and st.st_nlink == 1
            ):
                if e.tries < EMPTY_CHECKS:  # created, still empty, not closed: keep waiting
                    self._requeue(e, now + max(self.cfg.settle_seconds, 0.1), tries=e.tries + 1)
                continue
            age = now_ns - st.st_mtime_ns
            if 0 <= age < settle_ns:
                self._requeue(e, now + (settle_ns - age) / 1e9 + 0.01)
                continue
            cands.append(Candidate(Path(e.path), e.role, relpath, st))
        if cands:
            self._ingest(cands + self._raws_behind(cands))

    def _raws_behind(self, cands: list[Candidate]) -> list[Candidate]:
        """Raw files that a parsed file in this batch proves complete, though their own close
        event has not arrived yet (each folder has its own emitter thread, so events of two
        folders can come out of order).  The pipeline closes the raw before it writes the
        parsed file, so a raw of the task's next versions with an mtime no later than the
        parsed file's is complete: ingesting both together pairs them as a scan would, instead
        of indexing the parsed file alone and retiring that document a moment later."""
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
            row = self.indexer.con.execute(
                "SELECT max(version) FROM sources WHERE stage = ? AND task_id = ? AND kind = 'raw'",
                (c.role.stage, name.task_id),
            ).fetchone()
            first = (row[0] or 0) + 1
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

    def _requeue(self, e: Pending, due: float, *, tries: int | None = None) -> None:
        self.pending.put(
            e.path,
            due,
            ready=e.ready,
            awaiting_close=e.awaiting_close,
            tries=e.tries if tries is None else tries,
            first=e.first,
        )

    def _ingest(self, cands: list[Candidate]) -> None:
        assert self.indexer is not None
        try:
            report = self.indexer.ingest(cands, ready=True)
        except (_Stopping, DocwatchError):
            raise
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                self._failed(cands, exc)
                return
            raise
        except Exception as exc:  # bad input must not stop the daemon; retry later
            self._failed(cands, exc)
            return
        self._account(report, len(cands))
        self._check_tables()  # the batch may have reloaded them; re-plan what they changed

    def _failed(self, cands: list[Candidate], exc: BaseException) -> None:
        self.stats["batch_failures"] += 1
        log.exception("a batch of %d files failed (%r); retrying them in 5s", len(cands), exc)
        due = time.monotonic() + 5.0
        for c in cands:
            self.pending.put(str(c.path), due)

    def _account(self, report: BatchReport, files: int) -> None:
        now = time.monotonic()
        for c in report.retry:  # deferred: young, or changed while read; settle rule
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
        known_stats = ix.ledger_stats(self.indexer.con)
        ingestor = self.indexer.ingestor
        default_known = ingestor.known
        ingestor.known = lambda r, s, m: ix.in_ledger_stats(known_stats, r, s, m)
        before = self.stats["docs_created"] + self.stats["docs_updated"]
        try:
            done = 0
            if why == "start-up" and (repair := missing_document_tasks(self.indexer)):
                log.warning(
                    "%d document directories are missing; rebuilding them from the sources",
                    len(repair),
                )
                self._account(self.indexer.ingest([], extra_tasks=repair), 0)
            for batch in task_batches(cands, self.cfg.batch_max_files):
                if self.stop_requested.is_set():
                    return
                self._account(self.indexer.ingest(batch), len(batch))
                done += len(batch)
                self._ping()
                if not self.ready.is_set():
                    self.notifier.extend_timeout(120)
                    self.notifier.status(f"catching up: {done}/{len(cands)} files")
        finally:
            ingestor.known = default_known
        self._check_tables()
        self._expire()
        self._account(runrecords.refresh(self.indexer, self.records), 0)
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

    def _expire(self) -> None:
        assert self.indexer is not None
        self._account(self.indexer.expire_pending(), 0)

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

    def _check_tables(self) -> None:
        """Re-plan the tasks the core found stale (task tables rewritten, here or while the
        daemon was down; tasks left by a dead writer): ``Indexer.needs_replan``."""
        assert self.indexer is not None
        if self.indexer.needs_replan():
            log.info("re-planning the tasks whose task-table facts changed")
            self._account(self.indexer.ingest([]), 0)

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


def run_watch(cfg: Config, *, run_id: str | None = None) -> None:
    """The CLI entry: run until SIGTERM/SIGINT, with signal handlers installed."""
    Watcher(cfg, run_id=run_id).run(install_signals=True)
