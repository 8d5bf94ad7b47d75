"""The writing side as one object: the index, the document store, the task tables, the locks.

``scan`` and ``watch`` both drive an ``Indexer``: it recovers what a dead writer left, runs
batches under the writer lock, retries a full disk or a locked database with backoff, and keeps
the set of tasks waiting for a re-plan (task tables rewritten, run records arrived, a dead
writer's batch), handed out in chunks so no single batch grows with the tree.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from docwatch.config import Config, require_data_root
from docwatch.core.clock import iso_utc
from docwatch.core.model import Attempt
from docwatch.core.tasks import TaskTables, effective_info, task_info
from docwatch.errors import IndexCorrupt, PermissionProblem
from docwatch.ingest.ingestor import BatchReport, Ingestor, IngestSettings, Known
from docwatch.ingest.pool import give_back_memory
from docwatch.ingest.sources import Candidate, Outcome
from docwatch.ingest.staging import StagingHelper, helper_wanted
from docwatch.ingest.tables import TaskTableReader
from docwatch.store.backend import open_index
from docwatch.store.docstore import DocStore
from docwatch.store.index import Index
from docwatch.store.locks import FileLock, claim_daemon, use_index, writer_lock

log = logging.getLogger("docwatch.indexer")
RETRYABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN}
NOT_ALLOWED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
#: Tasks re-planned per batch when many wait (tables rewritten): each batch stays short.
REPLAN_CHUNK = 200


def default_run_id(prefix: str = "backfill") -> str:
    return f"{prefix}-{datetime.now(UTC):%Y%m%d}"


class Indexer:
    """Everything a writer needs, opened once; ``close`` releases it."""

    def __init__(
        self,
        cfg: Config,
        run_id: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        enrich: Callable[[dict, Attempt], dict] | None = None,
        live_since_ns: int | None = None,
        daemon: bool = False,
    ) -> None:
        require_data_root(cfg)
        self.cfg = cfg
        self._claims: list[FileLock] = []
        try:
            self.index = self._open(daemon)
        except BaseException:
            self._release_claims()
            raise
        self.writer_id = cfg.instance_name
        staging = cfg.docs_root / ".tmp" / self._index_id() / self.writer_id
        self.store = DocStore(
            cfg.docs_root,
            staging=staging,
            link=cfg.link,
            file_mode=cfg.file_mode,
            dir_mode=cfg.dir_mode,
        )
        self.tables_reader = TaskTableReader(cfg.data_root, log=logging.getLogger("docwatch.tasks"))
        self._tables: TaskTables | None = None
        self._all_checked_at: dict | None = None  # table signatures a peek found all checked
        # One batch at a time per index (SQLite), or per instance of a shared index (PostgreSQL:
        # writers of other instances work beside it, task by task; store/postgres.py).
        self.lock = (
            FileLock(staging.parent / f"{self.writer_id}.writer.lock")
            if cfg.index_url
            else writer_lock(cfg.db)
        )
        self.sleep = sleep
        self.settings = IngestSettings(
            data_root=cfg.data_root,
            run_id=run_id,
            settle_ns=int(cfg.settle_seconds * 1e9),
            pair_window_ns=int(cfg.pair_window * 1e9),
            max_bytes=cfg.max_file_bytes,
            prompt_copy=cfg.prompt_copy,
            live_since_ns=live_since_ns,
        )
        self.ingestor = Ingestor(
            self.index,
            self.store,
            self.settings,
            self.tables,
            writer_id=self.writer_id,
            enrich=enrich,
        )
        self._replan: set[tuple[str, str]] = set()

    def use_enrich(self, enrich: Callable[[dict, Attempt], dict] | None) -> None:
        """Facts only the run records know (run_id, true status, usage), from now on."""
        self.ingestor.enrich = enrich

    @property
    def con(self):
        """The index's DB-API connection (for ad-hoc reads)."""
        return self.index.con

    def _open(self, daemon: bool) -> Index:
        """Open the index with this writer's claims: every writer shares the index (only
        ``rebuild-index`` needs it alone), and one daemon per index (per instance of a
        PostgreSQL index)."""
        cfg = self.cfg
        if cfg.index_url is None:  # file locks beside the SQLite file, taken before opening
            if daemon:
                self._claims.append(claim_daemon(cfg.db))
            self._claims.append(use_index(cfg.db))
            return _not_allowed_as_problem(lambda: open_index(cfg.db), cfg)
        index = open_index(cfg.index_url)
        try:
            index.claim_users(exclusive=False)
            if daemon:
                index.claim_daemon(cfg.instance_name)
        except BaseException:
            index.close()
            raise
        return index

    def _release_claims(self) -> None:
        for claim in reversed(self._claims):
            claim.release()
        self._claims.clear()

    def _index_id(self) -> str:
        """A name for this index that stays the same: its own staging folder under docs/.tmp."""
        index_id = self.index.get_state("index_id")
        if index_id is None:
            with self.index.transaction():
                index_id = self.index.set_state_once("index_id", uuid.uuid4().hex[:12])
        return index_id

    def tables(self) -> TaskTables:
        """The task tables, re-read only when one of the files changed; then every task
        planned with other tables is checked against them."""
        if self._tables is None or self.tables_reader.changed():
            self._tables = self.tables_reader.load()
            self._replan |= self.stale_tasks(self._tables)
        return self._tables

    def look_at_tables(self) -> None:
        """What ``tables`` does, without parsing anything when every stored task was already
        checked against the tables' current bytes (a re-scan or a restart, tables unchanged)."""
        if self._tables is not None:  # parsed already: a change is parsed again at once
            self.tables()
            return
        sigs = self.tables_reader.signatures()
        if sigs == self._all_checked_at:
            return
        digest = self.tables_reader.peek_digest()
        if digest is not None and self.index.all_tasks_from(digest):
            self._all_checked_at = sigs  # until a file changes
        else:
            self.tables()

    def stale_tasks(self, tables: TaskTables) -> set[tuple[str, str]]:
        """Tasks whose stored facts differ from what the tables now say (sticky: a task the
        tables no longer list keeps its facts, so it is never stale for that).  Only tasks
        not yet checked against these very tables are looked at, a page at a time; those
        that agree are marked so the next check skips them."""
        stale: set[tuple[str, str]] = set()
        after = ("", "")
        while page := self.index.task_facts_not_from(tables.digest, after):
            agree = []
            for stored, planned in page:
                current = task_info(tables, stored.stage, stored.task_id)
                if effective_info(current, stored).fingerprint() != planned:
                    stale.add((stored.stage, stored.task_id))
                else:
                    agree.append((stored.stage, stored.task_id, planned))
            if agree and tables.digest:
                with self.index.transaction():
                    self.index.mark_tasks_checked(agree, tables.digest)
            after = (page[-1][0].stage, page[-1][0].task_id)
        return stale

    @contextmanager
    def staging_helper(self) -> Iterator[None]:
        """A staging helper process for one pass over many files (a scan, the daemon's
        catch-up): started by the pass's first new document, ended with the pass, so an idle
        daemon keeps none (``ingest/staging.py``)."""
        if self.ingestor.helper is not None or not helper_wanted(self.cfg.link):
            yield
            return
        self.ingestor.helper = StagingHelper()
        try:
            yield
        finally:
            helper, self.ingestor.helper = self.ingestor.helper, None
            helper.close()

    def close(self) -> None:
        try:
            self.index.close()
        finally:
            self._release_claims()

    def recover(self) -> int:
        """Clean what a writer that died mid-batch left behind (call before the first batch)."""
        self.lock.acquire(sleep=self.sleep)
        try:
            return self._recover_locked()
        finally:
            self.lock.release()

    def _recover_locked(self) -> int:
        intents = self.index.take_intents(self.writer_id)
        if intents:
            # A killed writer's session (PostgreSQL) may still be finishing the commit it sent:
            # its task locks go only when the session ends; then the intents say what happened.
            self.index.wait_tasks((r["stage"], r["task_id"]) for r in intents)
            intents = self.index.take_intents(self.writer_id)
        try:
            changed = self.store.recover(intents)
        finally:
            self.index.unlock_tasks()
        self._replan |= {(r["stage"], r["task_id"]) for r in intents}
        if intents:
            with self.index.transaction():
                self.index.clear_intents(self.writer_id)
            log.warning("recovered %d unfinished document writes from a previous run", len(intents))
        return changed

    def ingest(
        self,
        candidates: list[Candidate],
        *,
        ready: bool = False,
        extra_tasks: Iterable[tuple[str, str]] = (),
        known: Known | None = None,
        force: set[str] = frozenset(),
        give_up_after: float | None = None,
        probed: Callable[[], list[Outcome]] | None = None,
        then: Callable[[], None] = lambda: None,
    ) -> BatchReport:
        """Run one batch under the writer lock, retrying transient failures with backoff.

        Up to ``REPLAN_CHUNK`` tasks waiting for a re-plan ride along; ``needs_replan`` says
        whether more wait.  ``probed`` and ``then``: as ``Ingestor.run_batch`` (a retry
        probes afresh).
        """
        delay, started = 0.5, time.monotonic()
        self.look_at_tables()  # notices rewritten task tables: their tasks are re-planned
        riders = set(sorted(self._replan)[:REPLAN_CHUNK])
        extra = set(extra_tasks) | riders
        while True:
            try:
                self.lock.acquire(sleep=self.sleep)
                try:
                    self._recover_locked()
                    report = self.ingestor.run_batch(
                        candidates,
                        ready=ready,
                        extra_tasks=extra,
                        known=known,
                        force=force,
                        probed=probed,
                        then=then,
                    )
                finally:
                    self.lock.release()
                self._replan -= riders
                self._replan |= report.replan_later
                give_back_memory(len(candidates))
                return report
            except Exception as exc:
                probed = None  # the outcomes were used: a retry reads the files again
                if isinstance(exc, OSError) and exc.errno in NOT_ALLOWED_ERRNOS:
                    raise PermissionProblem(_not_allowed(exc, self.cfg)) from exc
                if (damage := self.index.corruption(exc)) is not None:
                    raise IndexCorrupt(damage) from exc
                if not (_transient(exc) or self.index.transient(exc)):
                    raise
                if give_up_after is not None and time.monotonic() - started > give_up_after:
                    raise
                log.warning(
                    "%s; retrying in %.1fs (nothing was lost; the batch is redone)",
                    _explain(exc, self.cfg),
                    delay,
                )
                self.sleep(delay)
                delay = min(delay * 2, 30.0)
                self._reopen_if_broken(exc)

    def _reopen_if_broken(self, exc: BaseException) -> None:
        """A lost connection to a PostgreSQL index is opened again before the retry."""
        if self.index.dialect != "postgres" or not self.index.transient(exc):
            return
        try:
            self.index.reopen()
        except Exception as again:  # still down: the next retry tries again
            log.warning("index %s: cannot reconnect yet (%s)", self.cfg.index_name, again)

    def needs_replan(self) -> bool:
        """Whether tasks wait for a re-plan (tables changed, or left by a dead writer)."""
        self.look_at_tables()
        return bool(self._replan)

    def has_queued(self) -> bool:
        """Whether tasks wait for a re-plan (without looking at the task tables again)."""
        return bool(self._replan)

    def queue_replan(self, tasks: Iterable[tuple[str, str]]) -> None:
        self._replan |= set(tasks)

    def expire_pending(self) -> int:
        """Queue raw-only attempts past the pairing window for their final status."""
        cutoff = time.time_ns() - int(self.cfg.pair_window * 1e9)
        tasks = self.index.pending_tasks(iso_utc(cutoff))
        self.queue_replan(tasks)
        return len(tasks)

    def ingest_queued(self, between: Callable[[], None] = lambda: None) -> BatchReport:
        """Re-plan every queued task, a chunk per batch, calling ``between`` after each."""
        report = BatchReport()
        while self.needs_replan():
            report.merge(self.ingest([]))
            between()
        return report


def _transient(exc: BaseException) -> bool:
    """A full disk or an I/O hiccup writing documents: retried with backoff."""
    return isinstance(exc, OSError) and exc.errno in RETRYABLE_ERRNOS


def _explain(exc: BaseException, cfg: Config) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full writing documents under {cfg.docs_root} ({exc}); free space there"
    if not isinstance(exc, OSError):
        return f"index {cfg.index_name} is busy, locked or unreachable ({exc})"
    return f"I/O error ({exc})"


def _not_allowed(exc: OSError, cfg: Config) -> str:
    where = exc.filename or cfg.docs_root
    if exc.errno == errno.EROFS:
        return f"{where}: read-only file system; docs_root ({cfg.docs_root}) must be writable"
    return (
        f"{where}: permission denied: docwatch's user (uid {_uid()}) lacks write (w) permission "
        f"there; docs_root is {cfg.docs_root}, the index {cfg.index_name}"
    )


def _uid() -> int:
    return os.geteuid()


def _not_allowed_as_problem(fn: Callable[[], Index], cfg: Config) -> Index:
    """Creating the index where docwatch may not write is a permission problem (exit 77)."""
    try:
        return fn()
    except OSError as exc:
        if exc.errno in NOT_ALLOWED_ERRNOS:
            raise PermissionProblem(_not_allowed(exc, cfg)) from exc
        raise
