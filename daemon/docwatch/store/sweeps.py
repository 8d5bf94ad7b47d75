"""What a re-scan reads in bulk from the index: a folder's ledger, every doc_id, the task facts
not yet checked against the task tables.  Each read goes a page at a time in an index's order,
so memory stays flat in the size of the index (``Index`` inherits these; SQLite reads the
ledger and the doc_ids in one streamed statement instead, ``store/sqlite.py``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from docwatch.core.model import TaskInfo


class SweepQueries:
    """Bulk reads over the whole index, for an ``Index`` (``execute``, ``executemany``)."""

    execute: Any
    executemany: Any

    #: Appended to a text column where rows must come in byte order (PostgreSQL: its locale).
    byte_order = ""

    def ledger_in_folder(self, folder: str, page: int = 5000) -> Iterator[Sequence]:
        """Rows (relpath, seen_size, seen_mtime_ns, …) of the sources in ``folder``, ordered by
        relpath, read a page at a time (memory stays flat in the ledger's size)."""
        rel = f"relpath{self.byte_order}"
        sql = (
            "SELECT relpath, seen_size, seen_mtime_ns, sha256 FROM sources"
            f" WHERE {rel} >= ? AND {rel} < ? AND ({rel} > ? OR ({rel} = ? AND sha256 > ?))"
            f" ORDER BY {rel}, sha256 LIMIT ?"
        )
        low, high = folder_range(folder)
        last = (low, "")
        while True:
            rows = self.execute(sql, (low, high, last[0], last[0], last[1], page)).fetchall()
            yield from rows
            if len(rows) < page:
                return
            last = (rows[-1][0], rows[-1][3])

    def doc_ids(self, page: int = 10000) -> Iterator[str]:
        """Every doc_id, in order, a page at a time (read from the primary key alone: no
        document row is touched and no page sorts anything)."""
        sql = (
            f"SELECT doc_id FROM documents WHERE doc_id{self.byte_order} > ?"
            f" ORDER BY doc_id{self.byte_order} LIMIT ?"
        )
        last = ""
        while True:
            rows = self.execute(sql, (last, page)).fetchall()
            for r in rows:
                yield r[0]
            if len(rows) < page:
                return
            last = rows[-1][0]

    def document_tasks(self, doc_ids: Iterable[str]) -> list[tuple[str, str, str]]:
        """(doc_id, stage, task_id) of each of these documents that is indexed."""
        out = []
        for chunk in in_chunks(list(doc_ids)):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT doc_id, stage, task_id FROM documents WHERE doc_id IN ({marks})"
            out += [(r[0], r[1], r[2]) for r in self.execute(sql, chunk).fetchall()]
        return out

    def task_facts_not_from(
        self, tables_digest: str, after: tuple[str, str] = ("", ""), limit: int = 5000
    ) -> list[tuple[TaskInfo, str | None]]:
        """A page of the stored tasks not yet checked against these tables, after ``after``
        in (stage, task_id) order, each with the fingerprint it was planned with."""
        rows = self.execute(
            "SELECT * FROM tasks WHERE (tables_digest IS NULL OR tables_digest <> ?)"
            " AND (stage > ? OR (stage = ? AND task_id > ?)) ORDER BY stage, task_id LIMIT ?",
            (tables_digest, after[0], after[0], after[1], limit),
        ).fetchall()
        return [(task_info_from_row(r), r["info_hash"]) for r in rows]

    def all_tasks_from(self, tables_digest: str) -> bool:
        """Whether every stored task was checked against (or planned with) these tables."""
        return (
            self.execute(
                "SELECT 1 FROM tasks WHERE tables_digest IS NULL OR tables_digest <> ? LIMIT 1",
                (tables_digest,),
            ).fetchone()
            is None
        )

    def mark_tasks_checked(self, tasks: Iterable[tuple[str, str, str]], tables_digest: str) -> None:
        """Record that these (stage, task_id, info_hash) facts agree with the tables; a row
        another writer changed meanwhile (another info_hash) is left for the next check."""
        self.executemany(
            "UPDATE tasks SET tables_digest = ? WHERE stage = ? AND task_id = ? AND info_hash = ?",
            [(tables_digest, *task) for task in tasks],
        )


def folder_range(folder: str) -> tuple[str, str]:
    """[low, high) of the relpaths inside ``folder`` ("0" follows "/" in byte order, so a
    sibling such as ``folder_raw`` or ``folder-x`` falls outside)."""
    return folder + "/", folder + "0"


def in_chunks(items: list, size: int = 400) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def task_info_from_row(r: Any) -> TaskInfo:
    facts = dict(r)
    facts["from_tables"] = bool(facts["from_tables"])
    return TaskInfo.from_facts(r["stage"], r["task_id"], facts)
