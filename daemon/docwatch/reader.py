"""The reader contract: "the latest good document of this task" from the index alone.

Readers open the index read-only and never scan folders; they are safe while the daemon
writes (WAL).  Nothing found is a ``DocumentNotFound`` that says what was asked.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from pathlib import Path

from docwatch.core.layout import KINDS, STAGES
from docwatch.errors import DocumentNotFound
from docwatch.store.backend import is_url, open_index

_DOC_ID = re.compile(r"^[0-9a-z]{12,16}$")


class DocumentsIndex:
    """Read-only access to the index and the document directories.

    ``db_path``: the SQLite file, or a ``postgresql://`` URL (then ``docs_root`` is needed).
    Works as any user who may read the data root: no write access is needed anywhere.
    """

    def __init__(self, db_path: str | Path, docs_root: str | Path | None = None) -> None:
        if is_url(db_path):
            if docs_root is None:
                raise ValueError("docs_root is required with a postgresql:// index")
            self.db_path: str | Path = str(db_path)
        else:
            self.db_path = Path(db_path)
        self.docs_root = Path(docs_root) if docs_root else Path(db_path).parent.parent / "docs"
        self._index = open_index(self.db_path, readonly=True)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> DocumentsIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, doc_id: str) -> dict:
        """The row of one document (meta_small decoded), superseded ones included."""
        with self._lock:
            row = self._index.get(doc_id)
        if row is None:
            raise DocumentNotFound(f"no document {doc_id!r} in {self.db_path}")
        return row

    def get_latest_by_task(
        self, stage: str, task_id: str, status: str | Iterable[str] = ("ok",)
    ) -> dict:
        """Latest document of a task whose status is in ``status`` (never a superseded one).

        "Latest" is the model's order: by created_at, then version; an unversioned legacy
        file is older than every versioned one of its task.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
        statuses = _statuses(status)
        with self._lock:
            row = self._index.latest_by_task(stage, task_id, statuses)
        if row is None:
            raise DocumentNotFound(
                f"no {'/'.join(statuses)} {stage} document for task {task_id!r} in {self.db_path}"
            )
        return row

    def get_latest_by_logical(
        self, logical_key_id: str, status: str | Iterable[str] = ("ok",)
    ) -> dict:
        """Latest document of a logical key (the seed's reader contract)."""
        statuses = _statuses(status)
        with self._lock:
            row = self._index.latest_by_logical(logical_key_id, statuses)
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

    def execute(self, sql: str, params: Iterable = ()) -> list:
        """Run a read-only query (``?`` placeholders; for status and ad-hoc reports); rows
        are tuples that also read by column name."""
        with self._lock:
            return self._index.execute(sql, params).fetchall()


def _statuses(status: str | Iterable[str]) -> list[str]:
    """The statuses asked for: one status as a string, or several."""
    return [status] if isinstance(status, str) else sorted(set(status))
