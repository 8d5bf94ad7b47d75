"""The reader contract: "the latest good document of this task" from the index alone.

Readers open the index read-only and never scan folders; they are safe while the daemon
writes (WAL).  Nothing found is a ``DocumentNotFound`` that says what was asked.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from docwatch.core.layout import STAGES
from docwatch.errors import DocumentNotFound
from docwatch.store import index as ix

KINDS = ("raw", "parsed", "prompt")
_DOC_ID = re.compile(r"^[0-9a-z]{12,16}$")
_LATEST = (
    "SELECT d.* FROM documents d JOIN attempts a USING (doc_id) WHERE {where}"
    " AND d.status IN ({marks}) ORDER BY d.created_at DESC, a.version DESC, d.doc_id DESC LIMIT 1"
)


class DocumentsIndex:
    """Read-only access to ``documents.sqlite`` and the document directories."""

    def __init__(self, db_path: str | Path, docs_root: str | Path | None = None) -> None:
        self.db_path = Path(db_path)
        self.docs_root = Path(docs_root) if docs_root else self.db_path.parent.parent / "docs"
        self._con = ix.connect(self.db_path, readonly=True)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> DocumentsIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _one(self, sql: str, params: Iterable) -> dict | None:
        with self._lock:
            row = self._con.execute(sql, tuple(params)).fetchone()
        return ix.row_to_dict(row) if row is not None else None

    def get(self, doc_id: str) -> dict:
        """The row of one document (meta_small decoded)."""
        row = self._one("SELECT * FROM documents WHERE doc_id = ?", [doc_id])
        if row is None:
            raise DocumentNotFound(f"no document {doc_id!r} in {self.db_path}")
        return row

    def get_latest_by_task(self, stage: str, task_id: str, status: Iterable[str] = ("ok",)) -> dict:
        """Latest document of a task (by created_at, then version) whose status is in ``status``."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
        statuses = sorted(set(status))
        sql = _LATEST.format(where="d.stage = ? AND d.task_id = ?", marks=_marks(statuses))
        row = self._one(sql, [stage, task_id, *statuses])
        if row is None:
            raise DocumentNotFound(
                f"no {'/'.join(statuses)} {stage} document for task {task_id!r} in {self.db_path}"
            )
        return row

    def get_latest_by_logical(self, logical_key_id: str, status: Iterable[str] = ("ok",)) -> dict:
        """Latest document of a logical key (the seed's reader contract)."""
        statuses = sorted(set(status))
        sql = _LATEST.format(where="d.logical_key_id = ?", marks=_marks(statuses))
        row = self._one(sql, [logical_key_id, *statuses])
        if row is None:
            raise DocumentNotFound(
                f"no {'/'.join(statuses)} document with logical key {logical_key_id!r}"
                f" in {self.db_path}"
            )
        return row

    def resolve_doc_dir(self, row: dict) -> Path:
        """The document's directory under docs_root (ids are checked, never trusted as paths)."""
        doc_id, stage = row["doc_id"], row["stage"]
        if not _DOC_ID.match(doc_id) or stage not in STAGES:
            raise DocumentNotFound(f"row has an invalid doc_id/stage: {doc_id!r}/{stage!r}")
        return self.docs_root / stage / doc_id

    def read_bytes(self, row: dict, kind: str) -> bytes:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        path = self.resolve_doc_dir(row) / f"{kind}.txt"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise DocumentNotFound(
                f"document {row['doc_id']} has no {kind} text ({path})"
            ) from None

    def read_text(self, row: dict, kind: str) -> str:
        """The document's raw/parsed/prompt text (undecodable bytes shown as U+FFFD)."""
        return self.read_bytes(row, kind).decode("utf-8", errors="replace")

    def execute(self, sql: str, params: Iterable = ()) -> list[sqlite3.Row]:
        """Run a read-only query (for status and ad-hoc reports)."""
        with self._lock:
            return self._con.execute(sql, tuple(params)).fetchall()


def _marks(values: list[str]) -> str:
    return ", ".join("?" * len(values))
