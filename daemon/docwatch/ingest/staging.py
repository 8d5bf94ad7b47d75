"""New documents staged by a helper process while their batch is still planned: in a scan
and in each catch-up pass of the daemon (``Indexer.staging_helper``: one helper a pass).

The planner hands over each task's changes as soon as they are final (``BatchPlanner.plan``'s
``planned``); a new document whose sources' bytes are in memory goes to the helper
(``store/stager.py``) with its ``metadata.json``, 16 at a time, and the helper creates its
staged directory while the rest of the batch is planned.  In one process the two passed the
GIL back and forth and were slower (bench/README.md, "Fourteenth pass"); in two, a 100k scan
on disk took 8% less time ("Eighteenth pass").  The durable protocol is unchanged: the writer
waits for every document before it syncs, and everything else (updates, link mode, files too
big to hold) is staged here as before.  A helper that dies costs nothing but its speed: its
documents are staged here again and later batches stay here (logged once).
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

from docwatch import __version__
from docwatch.children import end_at_eof, start_child
from docwatch.core.jsontext import metadata_bytes
from docwatch.ingest import pool
from docwatch.ingest.planner import Change, metadata_with_chars
from docwatch.store import stager
from docwatch.store.docstore import HAS_SYNCFS, Batch, DocStore, Op, StagedDocument
from docwatch.store.sourcefiles import count_chars

log = logging.getLogger("docwatch.ingest")

#: Documents a message to the helper carries: it starts on the first ones at once, and holds
#: one message (~0.3 MB) at a time.
DOCS_A_MESSAGE = 16
#: What staging here does with changes: their staged documents, or the exceptions raised.
StageHere = Callable[[list[Change]], list]


class StagingHere:
    """A batch's documents staged in this process once the batch is planned (on the I/O
    threads): the writer's default, and what a batch without a helper uses."""

    def __init__(self, store: DocStore) -> None:
        self.store = store
        self._batch: Batch | None = None

    def begin(self) -> Batch:
        """The batch's staging directory."""
        if self._batch is None:
            self._batch = self.store.begin()
        return self._batch

    def add(self, changes: Iterable[Change]) -> None:
        """A task's changes, final: nothing starts before the plan is done."""

    def outcomes(self, changes: list[Change], stage_here: StageHere) -> list:
        """Each change's staged document, or the exception its staging raised."""
        return stage_here(changes)

    def abandon(self) -> None:
        """The batch is not written: remove what was staged."""
        if self._batch is not None:
            self._batch.cleanup()


def helper_wanted(link: bool) -> bool:
    """Whether a pass stages through a helper: not with ``io_threads = 0`` (everything on the
    caller), not in link mode (no bytes to write), and only where one ``syncfs`` makes a batch
    durable (elsewhere each file is fsynced as it is written, here)."""
    return pool.IO_THREADS > 0 and not link and HAS_SYNCFS and bool(sys.executable)


class StagingHelper:
    """One writer's helper process: started by its first batch, ended by ``close``."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.dead = False

    def send(self, message: tuple) -> bool:
        """Pass one message; False when the helper is gone (it is then given up)."""
        if self.dead:
            return False
        try:
            if self.proc is None:
                self.proc = _start_helper()
                log.debug("staging helper process started (pid %d)", self.proc.pid)
            assert self.proc.stdin is not None
            for part in stager.encode(message):
                self.proc.stdin.write(part)
            self.proc.stdin.flush()
            return True
        except OSError as exc:
            self._give_up(f"failed ({exc})")
            return False

    def reply(self) -> dict | None:
        """The documents the helper could not write, once it wrote every one sent; None when
        it is gone."""
        if self.dead or self.proc is None:
            return None
        try:
            return stager.read_reply(self.proc.stdout)
        except (OSError, EOFError, ValueError, struct.error) as exc:
            self._give_up(f"ended ({exc or 'no reply'})")
            return None

    def _give_up(self, why: str) -> None:
        proc, self.proc, self.dead = self.proc, None, True
        code = _end(proc)
        log.warning(
            "the staging helper process (pid %s, exit %s) %s; its documents are staged by "
            "this process from now on (nothing is lost)",
            proc.pid if proc else "-",
            code,
            why,
        )

    def close(self) -> None:
        """End the helper: EOF on its input, then a kill if it does not go (``children``)."""
        proc, self.proc = self.proc, None
        code = _end(proc)
        if proc is not None:
            log.debug("staging helper process (pid %d) ended (exit %s)", proc.pid, code)


def _start_helper() -> subprocess.Popen:
    """The helper, started with SIGINT and SIGTERM blocked (``children.start_child``); the
    parent alone decides when it ends."""
    return start_child(
        [sys.executable, "-I", "-S", stager.__file__, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def _end(proc: subprocess.Popen | None) -> int | None:
    if proc is None:
        return None
    code = end_at_eof(proc)
    if proc.stdout is not None:
        proc.stdout.close()
    return code


class HelperStaging(StagingHere):
    """One batch: ``add`` gives the helper each new document as it is planned; ``outcomes``
    waits for them all and stages the rest here, in the order of the batch's changes."""

    def __init__(self, helper: StagingHelper, store: DocStore, contents: dict) -> None:
        super().__init__(store)
        self.helper = helper
        self.contents = contents
        self.sent: dict[str, StagedDocument] = {}  # doc_id → what the helper writes
        self.waiting: list[tuple[str, list[tuple[str, bytes]]]] = []
        self.began = False  # the helper was told this batch's directory

    def add(self, changes: Iterable[Change]) -> None:
        """A task's changes, final: its new documents go to the helper."""
        if self.helper.dead:
            return
        for c in changes:
            files = self._files(c)
            if files is None:
                continue
            chars = {name: count_chars(data) for name, data in files}
            meta = metadata_with_chars(c, chars, __version__, time.time_ns())
            files.append(("metadata.json", metadata_bytes(meta)))
            staged_dir = self.begin().root / c.doc_id
            names = [name for name, _ in files]
            self.sent[c.doc_id] = StagedDocument(
                c.doc_id, c.info.stage, c.op, staged_dir, files=names, chars=chars
            )
            self.waiting.append((c.doc_id, files))
            if len(self.waiting) >= DOCS_A_MESSAGE:
                self._flush()

    def _files(self, c: Change) -> list[tuple[str, bytes]] | None:
        """The document's copies, or None to stage it here: an update, or a source whose
        bytes are not in memory (a big file is copied as a stream)."""
        if c.op is not Op.CREATE or c.remove:
            return None
        files = []
        for kind, s in c.files.items():
            data = self.contents.get(s.key)
            if data is None:
                return None
            files.append((f"{kind}.txt", data))
        return files

    def _flush(self) -> None:
        if not self.waiting:
            return
        waiting, self.waiting = self.waiting, []
        if not self.began:
            store = self.store
            begin = ("begin", os.fspath(self.begin().root), store.file_mode, store.dir_mode)
            self.began = self.helper.send(begin)
        if self.began:
            self.helper.send(("docs", waiting))

    def _wait(self) -> dict | None:
        """Every document sent is written (or failed); None when the helper died."""
        self._flush()
        if not self.began:
            return None if self.sent else {}
        self.helper.send(("end",))
        return self.helper.reply()

    def outcomes(self, changes: list[Change], stage_here: StageHere) -> list:
        """Each change's staged document, or the exception its staging raised (as the I/O
        threads give them); what the helper did not write is staged with ``stage_here``."""
        failed = self._wait()
        if failed is None:  # the helper died: its documents are written again, here
            for staged in self.sent.values():
                shutil.rmtree(staged.staged_dir, ignore_errors=True)
            self.sent.clear()
        batch = self.begin()
        out: list = [None] * len(changes)
        here = []
        for i, c in enumerate(changes):
            staged = self.sent.get(c.doc_id)
            if staged is None:
                here.append(i)
            elif c.doc_id in failed:
                out[i] = OSError(*failed[c.doc_id])
            else:
                batch.add_staged(staged)
                out[i] = staged
        for i, result in zip(here, stage_here([changes[i] for i in here]), strict=True):
            out[i] = result
        return out

    def abandon(self) -> None:
        """The batch is not written: wait for the helper, then remove what it staged."""
        self._wait()
        super().abandon()
