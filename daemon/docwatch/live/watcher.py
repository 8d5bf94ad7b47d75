"""``docwatch watch``: the live daemon.  It only decides *when* a file is ready; the
``Indexer`` (shared with ``scan``) reads, plans, writes and commits.

Start-up: take the daemon lock, recover a dead writer's leftovers, start the observer on every
source folder (``events.WatchSet``), *then* run the catch-up (``scan.catch_up``) so nothing
falls between them, and only then send ``READY=1``.

Live: the observer's handler only enqueues ``(path, kind)``.  The main thread drains that
queue into the ``PendingTable``; ``Batches`` writes what ``readiness.decide`` finds ready in
group commits (up to ``batch_max_files`` paths, or ``batch_max_delay`` after the first one).

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
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from docwatch.config import Config
from docwatch.core.layout import folder_roles
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.ingestor import BatchReport
from docwatch.ingest.scan import catch_up
from docwatch.ingest.sources import list_folder
from docwatch.live.batches import Batches
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
from docwatch.live.pending import PendingTable
from docwatch.live.sdnotify import Notifier
from docwatch.live.signals import SignalHandling
from docwatch.live.timers import Timers

log = logging.getLogger("docwatch.watch")

DEFAULT_RUN_ID = "watch"
SUPERVISE_EVERY = 1.0  # observer / emitter / folder checks
STATUS_EVERY = 5.0  # STATUS= to systemd
TABLES_EVERY = 1.0  # task-table change check (also after every batch)
MAX_TICK = 0.5  # the main loop wakes at least this often (stop flag, timers)


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
        self.batches = Batches(cfg, self.pending, self.roles, self.stats, (_Stopping,))
        self._arm_needed = False
        self.loop_turns = 0  # main-loop wake-ups (an idle daemon sleeps between timers)
        self.longest_turn = 0.0  # seconds: the longest stretch the loop spent in one turn
        self._watchdog_every = self.notifier.watchdog_interval()
        self._next_ping = 0.0

    # -- public --------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to finish the batch in hand and return from ``run()``."""
        self.stop_requested.set()
        self.wake()

    def wake(self) -> None:
        self.events.put((None, WAKE))  # SimpleQueue.put is safe from signal handlers

    def run(self, *, install_signals: bool = False) -> None:
        if install_signals:
            with SignalHandling(self.stop):
                self._run_guarded()
        else:
            self._run_guarded()

    # -- lifecycle -----------------------------------------------------------------------

    def _run_guarded(self) -> None:
        try:
            self.indexer = Indexer(
                self.cfg,
                self.run_id,
                sleep=self._sleep,
                live_since_ns=time.time_ns(),
                daemon=True,  # one daemon per index (per instance of a PostgreSQL index)
            )
            self.batches.indexer = self.indexer
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
        if (first_due := self.batches.due_at()) is not None:
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
            log.warning(
                "inotify queue overflowed (the kernel dropped events); rescanning every folder,"
                " so no file is missed"
            )
            self.stats["rescans"] += 1
            self.pending.forget_creations()
            self._arm()
            self._catch_up("overflow")
        if self._arm_needed:
            self._arm()
        self.batches.maybe_run()
        if self.run_facts is not None:
            self.run_facts.step(self.indexer)
        if self.indexer.has_queued():
            self.batches.account(self.indexer.ingest([]), 0)
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
            due = now + self.cfg.settle_seconds
            self.pending.put(path, due, awaiting_close=True, created=True, keep=True)
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

    def _catch_up(self, why: str) -> None:
        """List every folder against the ledger and ingest what is new, like ``scan`` (the
        settle rule applies; files with a future mtime go to the pending table to settle)."""
        assert self.indexer is not None
        started = time.monotonic()
        before = self.stats["docs_created"] + self.stats["docs_updated"]
        done = [0]

        def add(report: BatchReport) -> None:
            self.batches.account(report, 0)

        def between() -> None:
            self._between_batches()
            if not self.ready.is_set():
                done[0] += self.cfg.batch_max_files
                self.notifier.status(f"catching up: {done[0]} files read")

        with self.indexer.staging_helper():  # ended with the pass: an idle daemon has none
            listed = catch_up(
                self.indexer,
                add,
                between=between,
                stop=self.stop_requested.is_set,
                settle_future=False,  # the pending table watches them settle
                skip=self.pending.closes_awaited(
                    time.monotonic(), self.batches.policy.close_wait_s
                ).__contains__,
            )
        changed = self.stats["docs_created"] + self.stats["docs_updated"] - before
        level = logging.INFO if why == "start-up" or changed else logging.DEBUG
        log.log(
            level,
            "%s pass: %d files listed, %d documents written, %.2fs",
            why,
            listed,
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
                    if role.kind == "raw":  # maybe still written in place: its close, or settle
                        self.pending.put(str(c.path), now, awaiting_close=True)
                    else:  # renamed into place: complete once it stops changing
                        self.pending.put(str(c.path), now, quiet=True)
            except OSError as exc:  # unreadable now: the reconcile pass lists it again
                log.warning("cannot list %s (%s); the next reconcile retries", target, exc)

    def _supervise(self) -> None:
        problem = self.watches.health()
        if problem:
            log.error("%s; rebuilding the observer and rescanning", problem)
            self.watches.rebuild()
            self.stats["rebuilds"] += 1
            self.pending.forget_creations()
            self._catch_up("rebuild")
            return
        self._arm()  # re-watches deleted, replaced or newly created folders

    def _status_text(self) -> str:
        s = self.stats
        text = (
            f"{s['docs_created']} documents created, {s['docs_updated']} updated, "
            f"{len(self.pending) + self.events.qsize()} queued"
        )
        if self.batches.last:
            files, at = self.batches.last
            text += f", last batch {files} files {time.monotonic() - at:.0f}s ago"
        if s["error"]:
            text += f", {s['error']} files with errors"
        return text

    def _make_handler(self) -> EnqueueHandler:
        return EnqueueHandler(
            self.events, self.roles, polling=self.polling, on_new_dir=self.watches.watch_early
        )


def run_watch(
    cfg: Config, *, run_id: str | None = None, run_facts: LiveRunFactsOpener | None = None
) -> None:
    """The CLI entry: run until SIGTERM/SIGINT, with signal handlers installed."""
    Watcher(cfg, run_id=run_id, run_facts=run_facts).run(install_signals=True)
