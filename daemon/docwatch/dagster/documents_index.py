"""``DocumentsIndex`` as a Dagster resource: the pipeline's readers resolve documents here.

For the pipeline's venv, next to its own Dagster: ``pip install --no-deps docwatch`` (this
module needs only Dagster, pydantic, which Dagster brings, and docwatch's stdlib-only reader;
the daemon's watchdog 7.1 conflicts with Dagster's ``watchdog<7``, README "Dagster
integration").  ``import docwatch`` never imports this module.  The resource is configuration
only (``db_path``, ``docs_root``); the core reader
(``docwatch.reader.DocumentsIndex``, a read-only SQLite connection, safe while ``docwatch watch``
writes) is opened lazily on first use, once per resource instance and process (a forked
executor process opens its own).

    from dagster import Definitions
    from docwatch.dagster.documents_index import DocumentsIndex

    defs = Definitions(
        assets=[...],
        resources={"documents_index": DocumentsIndex(db_path="data/db/documents.sqlite",
                                                     docs_root="data/docs")},
    )

    @asset
    def essay_prompt(context, documents_index: DocumentsIndex) -> str:
        row = documents_index.get_latest_by_task("draft", draft_task_id)  # latest ok
        draft_text = documents_index.read_text(row, "parsed")

Nothing ok → the core ``DocumentNotFound`` (a ``LookupError``), naming the stage, task or
logical key and the index: the seed's "fail fast" reader contract.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from docwatch.errors import DocumentNotFound
from docwatch.reader import DocumentsIndex as _CoreIndex

__all__ = ["DocumentNotFound", "DocumentsIndex"]


class DocumentsIndex(dg.ConfigurableResource):
    """Read-only access to docwatch's index from Dagster assets (the seed's reader contract)."""

    db_path: str = ""  # the SQLite index file, or
    index_url: str = ""  # a PostgreSQL index: postgresql://reader@db-host/docwatch
    docs_root: str

    _reader: _CoreIndex | None = PrivateAttr(default=None)
    _pid: int | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # -- the core reader -----------------------------------------------------------------

    def reader(self) -> _CoreIndex:
        """The core reader, opened on first use in this process (a missing index is retried
        on the next call, so a pipeline may start before ``docwatch`` has created it)."""
        with self._lock:
            if self._reader is None or self._pid != os.getpid():
                if not (self.index_url or self.db_path):
                    raise ValueError("DocumentsIndex needs db_path (SQLite) or index_url")
                location = self.index_url or Path(self.db_path)
                self._reader = _CoreIndex(location, Path(self.docs_root))
                self._pid = os.getpid()
            return self._reader

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._reader is not None and self._pid == os.getpid():
                self._reader.close()
            self._reader = None
            self._pid = None

    # -- the API (Resource API Sketch) -----------------------------------------------------

    def get_latest_by_task(self, stage: str, task_id: str, status: Iterable[str] = ("ok",)) -> dict:
        """The latest document of ``(stage, task_id)`` whose status is in ``status``.

        Raises ``DocumentNotFound`` when there is none.
        """
        return self.reader().get_latest_by_task(stage, task_id, status)

    def get_latest_by_logical(self, logical_key_id: str, status: Iterable[str] = ("ok",)) -> dict:
        """The latest document of a logical key whose status is in ``status``."""
        return self.reader().get_latest_by_logical(logical_key_id, status)

    def get(self, doc_id: str) -> dict:
        """One document's row."""
        return self.reader().get(doc_id)

    def resolve_doc_dir(self, row: dict) -> Path:
        """The document's directory (``<docs_root>/<stage>/<doc_id>``)."""
        return self.reader().resolve_doc_dir(row)

    def read_text(self, row: dict, kind: str) -> str:
        """The document's ``raw``, ``parsed`` or ``prompt`` text."""
        return self.reader().read_text(row, kind)

    def read_bytes(self, row: dict, kind: str) -> bytes:
        return self.reader().read_bytes(row, kind)
