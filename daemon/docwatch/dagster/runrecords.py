"""Run records: what the Dagster instance knows about a document that its files cannot say.

The legacy files cannot tell a truncated response from a parser error, and carry no run id or
token counts; the Dagster instance that ran the pipeline records them (LEGACY_PIPELINE.md, "What
the Dagster instance records").  This module turns those records into *facts* about documents
and applies them through the ingest hook (``Ingestor.enrich``).

The pure parts: events → facts in ``runfacts.py``, which event is whose in ``matching.py``.

I/O part: ``RunRecords(dagster_home, folders, dagster_python=...)`` keeps the cursor of
``events.py`` (which does the reading: materialisations by storage id per asset,
step failures per run, runs by ``updated_after``; see its docstring), so ``poll()`` reads only
new events and returns the (stage, task_id) pairs they concern.  Two transports:

* ``Subprocess`` when ``dagster_python`` is set (the normal deployment): the pipeline venv's
  Python runs ``events.py`` by file path, so the instance is read by the Dagster that
  wrote it, whatever docwatch's own venv holds (Dagster >= 1.8.5 requires ``watchdog<7``, the
  daemon watchdog 7.1);
* ``InProcess`` otherwise: ``import docwatch.dagster.events`` here (Dagster must import in
  docwatch's venv; ``import docwatch`` never imports Dagster).

Wiring: ``attach(indexer, cfg)`` (``scan`` at start) and ``refresh(indexer, records)``: poll,
then re-plan only the tasks with a stored document that does not carry its facts yet
(``stale_tasks``: one indexed query per task, no planning, so a re-scan stays cheap); a Dagster
read problem is logged and retried at the next call, never raised.  The daemon reads through a
``Poller`` (its own thread: a read may block for up to ``SUBPROCESS_TIMEOUT``) and ``apply``s
what it brought in chunks between its other work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docwatch.core.layout import STAGES, folder_roles
from docwatch.dagster import events as dagster_events
from docwatch.dagster.matching import RecordBook, choose, relpath_below_root
from docwatch.dagster.runfacts import ASSETS, Facts, RunEvent, event_from_dict, facts_of
from docwatch.dagster.transports import (
    SUBPROCESS_TIMEOUT,
    InProcess,
    RunRecordsError,
    Subprocess,
)
from docwatch.errors import DocwatchError
from docwatch.store.index import Index, row_to_dict, split_source_key

if TYPE_CHECKING:
    from docwatch.config import Config
    from docwatch.ingest.indexer import Indexer
    from docwatch.ingest.ingestor import BatchReport

log = logging.getLogger("docwatch.runrecords")

#: How often ``watch`` should call ``refresh`` (seconds).
POLL_EVERY = 2.0

#: While reads keep failing, the warning is repeated at most this often (seconds).
WARN_EVERY = 300.0


class RunRecords:
    """Reads a Dagster instance incrementally and keeps a ``RecordBook`` of its events.

    ``dagster_python`` set: read through ``Subprocess`` (the pipeline's Python); else
    ``InProcess`` (Dagster must import in docwatch's venv).  ``transport``: any object with
    ``read(cursor) -> (events, cursor)``, ``describe()`` and ``close()``.
    """

    def __init__(
        self,
        dagster_home: Path | str,
        folders: Iterable[str],
        *,
        assets: Mapping[str, str] = ASSETS,
        dagster_python: Path | str | None = None,
        instance: Any = None,
        transport: Any = None,
        timeout: float = SUBPROCESS_TIMEOUT,
    ) -> None:
        self.dagster_home = Path(dagster_home)
        self.assets = dict(assets)
        self.book = RecordBook(folders)
        if transport is None and dagster_python is not None:
            transport = Subprocess(
                Path(dagster_python), self.dagster_home, self.assets, timeout=timeout
            )
        elif transport is None:
            transport = InProcess(self.dagster_home, self.assets, instance)
        self.transport = transport
        self.cursor: dict = dagster_events.new_cursor()
        self._pending: set[tuple[str, str]] = set()
        self.polls = 0
        self.failures = 0  # reads failed in a row
        self._warned_at: float | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        self.transport.close()

    @property
    def enrich(self):
        """The ``Ingestor.enrich`` hook."""
        return self.book.enrich

    def has_pending(self) -> bool:
        return bool(self._pending)

    def refresh(self, indexer: Indexer) -> BatchReport:
        """Poll, then re-plan what the records change (``scan`` calls this at its end)."""
        return refresh(indexer, self)

    def take_pending(self, limit: int | None = None) -> set[tuple[str, str]]:
        """Tasks from earlier polls not handed out yet (at most ``limit``)."""
        if limit is None or len(self._pending) <= limit:
            out, self._pending = self._pending, set()
            return out
        out = set(sorted(self._pending)[:limit])
        self._pending -= out
        return out

    # -- polling -----------------------------------------------------------------------
    # ``fetch`` does the I/O (it may block for up to the transport's timeout, so the daemon
    # runs it on a thread of its own); ``absorb`` updates the cursor and the book, on the
    # thread that ingests.  ``poll`` is both at once.

    def fetch(self) -> tuple[list[RunEvent], dict]:
        """Read the events added since the cursor: (events, the cursor after them)."""
        raw, cursor = self.transport.read(self.cursor)
        try:
            events = [e for e in (event_from_dict(d, self.assets) for d in raw) if e is not None]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RunRecordsError(
                f"{self.transport.describe()}: malformed event ({exc!r})"
            ) from None
        return events, cursor

    def absorb(self, fetched: tuple[list[RunEvent], dict] | None) -> set[tuple[str, str]]:
        """Take a ``fetch`` result: the (stage, task_id) it concerns, also kept for ``refresh``.
        None (a failed fetch) changes nothing: the next fetch starts from the same cursor."""
        if fetched is None:
            return set()
        events, self.cursor = fetched
        self.polls += 1
        touched = self.book.add(events)
        self._pending |= touched
        if events:
            log.debug("run records: %d new events, %d tasks", len(events), len(touched))
        return touched

    def poll(self) -> set[tuple[str, str]]:
        """Read events added since the last poll; return the (stage, task_id) they concern.

        All or nothing: when a read fails, the cursor stays where it was.
        """
        return self.absorb(self.fetch())

    def poll_logged(self) -> set[tuple[str, str]] | None:
        """``poll``, but a failure is logged (and None returned) instead of raised."""
        fetched = self.fetch_logged()
        return None if fetched is None else self.absorb(fetched)

    def fetch_logged(self) -> tuple[list[RunEvent], dict] | None:
        """``fetch``, but a failure is logged (and None returned) instead of raised.

        Configuration problems of the in-process reader (``DocwatchError``) are still raised.
        The first failure is a warning with everything known; while reads keep failing the
        warning is repeated at most every ``WARN_EVERY`` seconds; recovery is logged.
        """
        started = time.monotonic()
        try:
            fetched = self.fetch()
        except DocwatchError:
            raise
        except Exception as exc:  # Dagster storage busy, migrating, unreachable; the child died
            self.failures += 1
            now = time.monotonic()
            if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                again = f" ({self.failures} failed reads in a row)" if self.failures > 1 else ""
                log.warning(
                    "reading Dagster run records from %s failed%s; retrying at the next poll: %s",
                    self.dagster_home,
                    again,
                    exc,
                )
            else:
                log.debug("reading Dagster run records failed again: %r", exc)
            return None
        if self.failures:
            log.info(
                "run records: reading again from %s after %d failed reads",
                self.dagster_home,
                self.failures,
            )
            self.failures, self._warned_at = 0, None
        elif self.polls == 0:
            log.info(
                "run records: %d Dagster events read from %s via %s in %.1fs",
                len(fetched[0]),
                self.dagster_home,
                self.transport.describe(),
                time.monotonic() - started,
            )
        return fetched


class Poller:
    """Fetches the run records on a thread of its own, so a slow or hung read (up to the
    transport's timeout) never blocks the daemon's loop.  The loop calls ``take()`` when it
    likes; a fetch result waits there, and the next fetch starts after it was taken (it needs
    the cursor ``absorb`` moves)."""

    def __init__(self, records: RunRecords, every: float = POLL_EVERY, wake=lambda: None) -> None:
        self.records = records
        self.every = every
        self.wake = wake
        self._result: list = []
        self._taken = threading.Event()
        self._taken.set()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="docwatch-runrecords", daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._taken.wait()
            if self._stop.is_set():
                return
            try:
                fetched = self.records.fetch_logged()
            except BaseException as exc:  # a configuration error: the loop raises it
                self._error = exc
                self.wake()
                return
            self._taken.clear()
            self._result = [fetched]
            self.wake()
            self._stop.wait(self.every)

    def take(self) -> bool:
        """Absorb a finished fetch, if one waits; True when it brought something to apply."""
        if self._error is not None:
            raise self._error
        if not self._result:
            return False
        fetched = self._result.pop()
        touched = self.records.absorb(fetched)
        self._taken.set()
        return bool(touched) or self.records.has_pending()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self._taken.set()
        self._thread.join(timeout)


# -- wiring (scan and watch) ---------------------------------------------------------------


def attach(indexer: Indexer, cfg: Config) -> RunRecords | None:
    """Open the run records of ``cfg.dagster_home`` (None when unset), read everything once,
    and give the indexer their enrich hook; the first poll's tasks are handed out by
    ``refresh``.  A failed first read is logged and retried at the next ``refresh``.
    """
    records = open_records(cfg)
    if records is None:
        return None
    records.absorb(records.fetch_logged())
    indexer.use_enrich(records.enrich)
    return records


def open_records(cfg: Config) -> RunRecords | None:
    """The run records ``cfg`` names (not read yet), or None without ``dagster_home``."""
    if cfg.dagster_home is None:
        return None
    return RunRecords(
        cfg.dagster_home,
        [r.folder for r in folder_roles(cfg.folders)],
        dagster_python=cfg.dagster_python,
    )


def refresh(indexer: Indexer, records: RunRecords | None) -> BatchReport:
    """Poll the run records and re-plan the indexed tasks whose stored rows lack their facts.

    A Dagster read problem is logged and retried at the next call; it never stops the caller.
    """
    from docwatch.ingest.ingestor import BatchReport

    if records is None:
        return BatchReport()
    records.absorb(records.fetch_logged())
    return apply(indexer, records)


def apply(indexer: Indexer, records: RunRecords, between=lambda: None) -> BatchReport:
    """Re-plan the tasks the records touched whose stored rows lack their facts, a chunk of
    tasks per batch (``between`` runs after each: the daemon feeds its watchdog there)."""
    tasks = stale_tasks(indexer.index, records.book, records.take_pending())
    indexer.queue_replan(tasks)
    return indexer.ingest_queued(between)


class LiveRecords:
    """The run records as the daemon uses them: fetched by a ``Poller`` thread, applied by
    the loop a chunk of tasks per turn (``watch.LiveRunFacts``)."""

    #: Tasks checked for stale facts per turn of the daemon's loop.
    CHUNK = 500

    def __init__(self, records: RunRecords, indexer: Indexer, wake=lambda: None) -> None:
        self.records = records
        indexer.use_enrich(records.enrich)
        self.poller = Poller(records, wake=wake).start()

    def step(self, indexer: Indexer) -> None:
        self.poller.take()
        tasks = self.records.take_pending(limit=self.CHUNK)
        if tasks:
            indexer.queue_replan(stale_tasks(indexer.index, self.records.book, tasks))

    def close(self) -> None:
        self.poller.stop()
        self.records.close()


def live_records(cfg: Config):
    """The daemon's opener of the run records of ``cfg`` (None without ``dagster_home``)."""
    if cfg.dagster_home is None:
        return None

    def open_live(indexer: Indexer, wake) -> LiveRecords | None:
        records = open_records(cfg)
        return None if records is None else LiveRecords(records, indexer, wake)

    return open_live


_ROW_FIELDS = (
    "run_id",
    "status",
    "usage_prompt_tokens",
    "usage_completion_tokens",
    "usage_max_tokens",
)
_META_FIELDS = ("status_reason", "finish_reason", "model_used", "dagster")
_STORED = (
    "SELECT d.*, a.created_at_ns AS _created_at_ns, a.raw_key AS _raw_key"
    " FROM documents d JOIN attempts a USING (doc_id) WHERE d.stage = ? AND d.task_id = ?"
    " AND d.status <> 'superseded'"
)


def stale_tasks(
    index: Index, book: RecordBook, tasks: Iterable[tuple[str, str]]
) -> set[tuple[str, str]]:
    """The tasks with a stored document that does not carry its run's facts yet.

    Read-only and cheap (one indexed query per task, no planning), so a re-scan with
    ``dagster_home`` re-plans only what the run records would change.
    """
    out = set()
    for stage, task_id in tasks:
        if stage not in STAGES:
            continue
        for stored in index.all(_STORED, (stage, task_id)):
            stored = row_to_dict(stored)
            raw = split_source_key(stored["_raw_key"])[0] if stored["_raw_key"] else None
            event = book.match(stage, task_id, raw, stored["_created_at_ns"])
            if event is None:
                continue
            want = facts_of(event).apply(stored)
            old_meta, new_meta = stored.get("meta_small") or {}, want["meta_small"]
            if any(want[k] != stored[k] for k in _ROW_FIELDS) or any(
                new_meta.get(k) != old_meta.get(k) for k in _META_FIELDS
            ):
                out.add((stage, task_id))
                break
    return out


__all__ = [
    "ASSETS",
    "Facts",
    "InProcess",
    "LiveRecords",
    "Poller",
    "RecordBook",
    "RunEvent",
    "RunRecords",
    "RunRecordsError",
    "Subprocess",
    "attach",
    "choose",
    "event_from_dict",
    "facts_of",
    "live_records",
    "open_records",
    "refresh",
    "relpath_below_root",
    "stale_tasks",
]
