"""The writing side as one object: index connection, document store, task tables, locks.

``scan`` and ``watch`` both drive an ``Indexer``: it recovers what a dead writer left, runs
batches under the writer lock, and retries a full disk or a locked database with backoff.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from docwatch.config import Config
from docwatch.core.tasks import TaskTableReader, TaskTables, task_info
from docwatch.ingest.batch import BatchReport, Ingestor, IngestSettings
from docwatch.ingest.sources import Candidate
from docwatch.store import index as ix
from docwatch.store.docstore import DocStore
from docwatch.store.locks import writer_lock

log = logging.getLogger("docwatch.indexer")
RETRYABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN}


def default_run_id(prefix: str = "backfill") -> str:
    return f"{prefix}-{datetime.now(UTC):%Y%m%d}"


class Indexer:
    """Everything a writer needs, opened once; ``close`` releases it."""

    def __init__(
        self, cfg: Config, run_id: str, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.cfg = cfg
        self.con = ix.connect(cfg.db)
        self.store = DocStore(
            cfg.docs_root, link=cfg.link, file_mode=cfg.file_mode, dir_mode=cfg.dir_mode
        )
        self.tables_reader = TaskTableReader(cfg.data_root, log=logging.getLogger("docwatch.tasks"))
        self._tables: TaskTables | None = None
        self.lock = writer_lock(cfg.db)
        self.sleep = sleep
        self.settings = IngestSettings(
            data_root=cfg.data_root,
            run_id=run_id,
            settle_ns=int(cfg.settle_seconds * 1e9),
            pair_window_ns=int(cfg.pair_window * 1e9),
            max_bytes=cfg.max_file_bytes,
            prompt_copy=cfg.prompt_copy,
        )
        self.ingestor = Ingestor(self.con, self.store, self.settings, self.tables)
        self._replan: set[tuple[str, str]] = set()

    def tables(self) -> TaskTables:
        """The task tables, re-read only when one of the files changed."""
        if self._tables is None or self.tables_reader.changed():
            self._tables = self.tables_reader.load()
            self._replan |= self.stale_tasks(self._tables)
        return self._tables

    def stale_tasks(self, tables: TaskTables) -> set[tuple[str, str]]:
        """Tasks whose documents were planned with other table contents than ``tables``."""
        return {
            (stage, task_id)
            for stage, task_id, planned in ix.task_info_hashes(self.con)
            if task_info(tables, stage, task_id).fingerprint() != planned
        }

    def close(self) -> None:
        self.con.close()

    def recover(self) -> int:
        """Clean what a writer that died mid-batch left behind (call before the first batch)."""
        self.lock.acquire(sleep=self.sleep)
        try:
            return self._recover_locked()
        finally:
            self.lock.release()

    def _recover_locked(self) -> int:
        intents = ix.take_intents(self.con)
        committed = {r["doc_id"] for r in intents if ix.document_exists(self.con, r["doc_id"])}
        removed = self.store.recover(
            [(r["doc_id"], r["stage"], r["op"]) for r in intents], committed
        )
        for doc in ix.get_documents(self.con, committed).values():
            removed += self.store.drop_unreferenced(doc)
        self._replan |= {(r["stage"], r["task_id"]) for r in intents}
        if intents:
            with ix.transaction(self.con):
                ix.clear_intents(self.con)
            log.warning("recovered %d unfinished document writes from a previous run", len(intents))
        return removed

    def ingest(
        self,
        candidates: list[Candidate],
        *,
        ready: bool = False,
        extra_tasks: Iterable[tuple[str, str]] = (),
        give_up_after: float | None = None,
    ) -> BatchReport:
        """Run one batch under the writer lock, retrying transient failures with backoff."""
        delay, started = 0.5, time.monotonic()
        self.tables()  # notices rewritten task tables: their tasks are re-planned
        extra = set(extra_tasks) | self._replan
        while True:
            try:
                self.lock.acquire(sleep=self.sleep)
                try:
                    self._recover_locked()
                    report = self.ingestor.run_batch(candidates, ready=ready, extra_tasks=extra)
                finally:
                    self.lock.release()
                self._replan -= extra
                return report
            except (OSError, sqlite3.OperationalError) as exc:
                if not _transient(exc):
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

    def needs_replan(self) -> bool:
        """Whether tasks wait for a re-plan (tables changed, or left by a dead writer)."""
        self.tables()
        return bool(self._replan)

    def expire_pending(self) -> BatchReport:
        """Give raw-only attempts past the pairing window their final status."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.cfg.pair_window)
        tasks = ix.pending_tasks(self.con, cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        if not tasks:
            return BatchReport()
        return self.ingest([], extra_tasks=tasks)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        return "locked" in text or "busy" in text or "disk I/O" in text or "full" in text
    return isinstance(exc, OSError) and exc.errno in RETRYABLE_ERRNOS


def _explain(exc: BaseException, cfg: Config) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full writing documents under {cfg.docs_root} ({exc}); free space there"
    if isinstance(exc, sqlite3.OperationalError):
        return f"index {cfg.db} is busy or locked by another process ({exc})"
    return f"I/O error ({exc})"
