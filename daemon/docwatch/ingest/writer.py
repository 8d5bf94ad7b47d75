"""Writing one batch: stage, sync, intents, publish, commit, finish (``store/docstore.py``).

The order is the durability contract: no row is committed before every file it references is
durable in place, and nothing a visible row references changes before its new row commits.
One task whose files cannot be staged (a source that changed, a file that vanished or became
unreadable) is left out and reported; the rest of the batch is written.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from docwatch import __version__
from docwatch.core.clock import now_iso
from docwatch.core.model import Source, TaskInfo
from docwatch.ingest.planner import Change, metadata_with_chars
from docwatch.ingest.pool import map_io, start_io
from docwatch.store import faults
from docwatch.store.docstore import HAS_SYNCFS, Batch, DocStore, FileSource, SourceChanged
from docwatch.store.index import Index, source_key
from docwatch.store.sourcefiles import sha256_of

if TYPE_CHECKING:
    from docwatch.ingest.staging import StagingHere

log = logging.getLogger("docwatch.ingest")

#: Errors of one source file while it is copied: that task waits, the batch goes on.
SOURCE_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ELOOP, errno.EISDIR}


@dataclass
class WriteResult:
    written: list[Change] = field(default_factory=list)
    retry: set[tuple[str, str]] = field(default_factory=set)  # tasks whose sources moved
    problems: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class BatchInput:
    """What one batch commits besides its changes."""

    changes: list[Change]
    new_sources: list[Source]  # first seen now (their facts are pinned by this commit)
    touched: list[Source]  # known bytes seen with another stat (only the stat cache moves)
    seen: dict  # source key → (size, mtime_ns) of the stat that showed its bytes now
    problems: list[tuple[str, str]]
    tasks: list[TaskInfo]  # facts to store (sticky task facts)
    contents: dict  # source key → bytes already read (small files)
    tables_digest: str | None = None  # the task tables ``tasks`` were planned with


class Writer:
    """Runs the batch protocol for one index and one document store."""

    def __init__(
        self,
        index: Index,
        store: DocStore,
        data_root: Path,
        writer_id: str,
        *,
        live_since_ns: int | None = None,
    ) -> None:
        self.index = index
        self.store = store
        self.data_root = data_root
        self._root = os.fspath(data_root)
        self.writer_id = writer_id
        self.live_since_ns = live_since_ns
        #: Whether a batch's syncfs also flushes its intents (decided at the first batch).
        self._intents_ride_syncfs: bool | None = None

    def write(
        self,
        batch_in: BatchInput,
        staging: StagingHere,
        after_rows: Callable[[], None] = lambda: None,
    ) -> WriteResult:
        """The batch protocol; ``staging`` holds the batch's documents, begun as they were
        planned or staged here now (``ingest/staging.py``); ``after_rows`` runs once its rows'
        statements are done, while its renames finish and before the commit (a scan starts
        reading the next batch there: its reads beside this batch's statements cost both of
        them the GIL's hand-overs)."""
        result = WriteResult(problems=list(batch_in.problems))
        if not batch_in.changes:  # only the ledger moves: no file to make durable
            staging.abandon()
            self._commit(None, batch_in, [], result, after_rows)
            return result
        batch = staging.begin()
        committed = False
        try:
            kept = self._stage_all(batch, batch_in, result, staging)
            self._sync_with_intents(batch, kept)
            # The renames run beside the rows' statements; the rows commit after them.
            self._commit(batch, batch_in, kept, result, after_rows)
            committed = True
            faults.point("committed")
            if batch.has_work_after_commit():
                batch.finish()
                with self.index.transaction():
                    self.index.clear_intents(self.writer_id, [c.doc_id for c in kept])
                faults.point("intents_cleared")
        except BaseException:
            if not committed or not batch.has_work_after_commit():
                batch.cleanup()
            # else: the committed intents need what is staged; recovery finishes the batch
            raise
        batch.cleanup()
        result.written = kept
        return result

    def _sync_with_intents(self, batch: Batch, kept: list[Change]) -> None:
        """Steps 1 and 2: the staged files durable, then the intents committed.  Where the
        batch's ``syncfs`` also flushes the index (an SQLite file on the staging's
        filesystem), the intents are committed first without a flush of their own and that
        one ``syncfs`` makes both durable before any rename: a flush less a batch."""
        task_of = {c.doc_id: c.info.task_id for c in kept}
        rows = [(d, st, task_of[d], op, detail) for d, st, op, detail in batch.intents()]
        if self._intents_ride_syncfs is None:
            self._intents_ride_syncfs = HAS_SYNCFS and self.index.flushed_by_syncfs(batch.root)
        if self._intents_ride_syncfs:
            with self.index.transaction(flush=False):
                self.index.put_intents(self.writer_id, rows)
            batch.sync_staged()
        else:
            batch.sync_staged()
            with self.index.transaction():
                self.index.put_intents(self.writer_id, rows)
        faults.point("intents_committed")

    def _commit(
        self,
        batch: Batch | None,
        batch_in: BatchInput,
        kept: list[Change],
        result: WriteResult,
        after_rows: Callable[[], None],
    ) -> None:
        """The rows' transaction.  A batch's renames and their sync run on an I/O thread while
        its statements run here; the transaction commits only once they are durable.  A
        failure of either rolls it back, and no failure returns while renames still run."""
        publishing = start_io(batch.publish) if batch is not None else None
        try:
            with self.index.transaction():
                self._put_rows(batch, batch_in, kept, result)
                after_rows()
                if publishing is not None:
                    publishing.result()  # the renames durable before the rows commit
                    faults.point("committing")  # a crash here: the whole commit or nothing
        finally:
            if publishing is not None:
                wait([publishing])  # never leave with renames still running

    def _put_rows(
        self, batch: Batch | None, batch_in: BatchInput, kept: list[Change], result: WriteResult
    ) -> None:
        retry = result.retry
        sources = batch_in.new_sources
        if retry:
            sources = [s for s in sources if (s.stage, s.task_id) not in retry]
        self.index.put_sources(sources + batch_in.touched, batch_in.seen)
        self.index.put_problems(result.problems)
        self.index.put_tasks(
            (i for i in batch_in.tasks if (i.stage, i.task_id) not in retry),
            batch_in.tables_digest,
        )
        self.index.put_documents((c.row, c.facts) for c in kept)
        if batch is not None and batch.has_work_after_commit():
            self.index.mark_intents_committed(c.doc_id for c in kept)
        elif kept:
            self.index.clear_intents(self.writer_id, [c.doc_id for c in kept])
        if sources:
            self._record_freshness(max(s.mtime_ns for s in sources))

    def _record_freshness(self, newest_ns: int) -> None:
        """``status``: when the last batch committed and, for files written while the daemon
        watched, the lag from the newest file's close to its row."""
        self.index.set_state("last_ingest", now_iso())
        live = self.live_since_ns is not None and newest_ns >= self.live_since_ns
        lag = f"{(time.time_ns() - newest_ns) / 1e9:.6f}" if live else ""
        self.index.set_state("last_batch", "live" if live else "backfill")
        self.index.set_state("last_lag_seconds", lag)

    def _stage_all(
        self,
        batch: Batch,
        batch_in: BatchInput,
        result: WriteResult,
        staging: StagingHere,
    ) -> list[Change]:
        staged_by_task: dict[tuple[str, str], list] = {}
        changes = batch_in.changes

        def stage_here(changes: list[Change]) -> list:
            return map_io(lambda c: self._stage_one(batch, c, batch_in.contents), changes)

        outcomes = staging.outcomes(changes, stage_here)
        for i, (c, staged) in enumerate(zip(changes, outcomes, strict=True)):
            if isinstance(staged, SourceChanged):  # rewritten in place since it was read?
                staged = outcomes[i] = self._stage_from_copies(batch, c, batch_in.contents)
            if isinstance(staged, SourceChanged):
                log.info("%s; retrying its task", staged)
                self._drop_task(batch, c.task, staged_by_task, result)
            elif isinstance(staged, OSError):
                paths = {str(self.data_root / s.relpath) for s in c.files.values()}
                if staged.errno not in SOURCE_ERRNOS or str(staged.filename) not in paths:
                    raise staged  # our own files (docs_root): the caller's backoff or a stop
                log.warning(
                    "%s: %s; its task waits for the next pass", staged.filename, staged.strerror
                )
                self._drop_task(batch, c.task, staged_by_task, result)
            elif isinstance(staged, BaseException):
                raise staged
            elif c.task in result.retry:  # another file of its task failed
                batch.drop(staged)
            else:
                staged_by_task.setdefault(c.task, []).append(staged)
        return [c for c in changes if c.task not in result.retry]

    @staticmethod
    def _drop_task(batch: Batch, task, staged_by_task: dict, result: WriteResult) -> None:
        result.retry.add(task)
        for s in staged_by_task.pop(task, []):
            batch.drop(s)

    def _stage_from_copies(self, batch: Batch, c: Change, contents: dict):
        """Stage a change whose source file no longer holds the bytes it was planned with (a
        file rewritten in place after it was ingested): take those bytes from a document that
        holds a copy; a prompt no document kept is gone, and the document says so.  Returns
        the staged document, or SourceChanged when raw or parsed bytes are nowhere."""
        files: dict[str, Source] = {}
        sources: dict[str, Path] = {}
        for kind, s in c.files.items():
            place = self._find_bytes(s)
            if place is not None:
                files[kind], sources[kind] = s, place
            elif kind == "prompt":
                gone = c.row["meta_small"].setdefault("unavailable", {})
                gone["prompt"] = f"{s.relpath} was rewritten after it was read; its bytes are gone"
            else:
                return SourceChanged(f"{s.relpath}: the bytes {s.sha256[:12]}… are nowhere now")
        c.files = files
        try:
            return self._stage_one(batch, c, contents, places=sources)
        except (SourceChanged, OSError) as exc:
            return exc

    def _find_bytes(self, s: Source) -> Path | None:
        """Where the bytes of source ``s`` are now: its own file, or a document's copy."""
        candidates = [self.data_root / s.relpath] + [
            self.store.doc_path(stage, doc_id) / f"{kind}.txt"
            for stage, doc_id, kind in self.index.holders(source_key(s.relpath, s.sha256))
        ]
        for path in candidates:
            try:
                if sha256_of(path) == s.sha256:
                    return path
            except OSError:
                continue
        return None

    def _stage_one(self, batch: Batch, c: Change, contents: dict, places: dict | None = None):
        places = places or {}
        files = {
            f"{kind}.txt": FileSource(
                places.get(kind) or f"{self._root}/{s.relpath}",
                s.sha256,
                contents.get(s.key),
                None if kind in places else s.mtime_ns,
            )
            for kind, s in c.files.items()
        }
        staged = batch.stage(c.doc_id, c.info.stage, c.op, files, c.remove)
        meta = metadata_with_chars(c, staged.chars, __version__, time.time_ns())
        batch.write_metadata(staged, meta)
        return staged
