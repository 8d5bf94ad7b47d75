"""The index's share of ``bench/protocol_floor.py --index``: a scan's rows written again into a
new index of the same schema (WAL, ``synchronous = FULL``), with the statements and commits
docwatch makes and none of its planning.  Stdlib only."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

#: The tables a scan fills, in the order docwatch writes them in a batch's rows transaction.
INDEX_TABLES = ("sources", "tasks", "documents", "attempts")


class IndexReplay:
    """A scan's rows written again into a new index of the same schema: the real index's
    statements and commits, with none of docwatch's planning around them."""

    def __init__(self, scan_db: Path, path: Path, batches: int) -> None:
        src = sqlite3.connect(f"file:{scan_db}?mode=ro", uri=True)
        try:
            self.schema = [
                sql
                for (sql,) in src.execute(
                    "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"
                    " AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
                )
            ]
            self.rows = {
                t: src.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in INDEX_TABLES
            }
            self.inserts = {t: _insert_sql(src, t) for t in INDEX_TABLES}
        finally:
            src.close()
        self.batches = batches
        self.con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.con.execute("PRAGMA journal_mode = WAL")
        self.con.execute("PRAGMA synchronous = FULL")
        for sql in self.schema:
            self.con.execute(sql)

    def put_intents(self, group: list) -> None:
        """The intents transaction: a row a document, committed (the WAL's fsync)."""
        self.con.execute("BEGIN IMMEDIATE")
        insert_many(
            self.con,
            "INSERT INTO intents (doc_id, stage, task_id, op, phase, writer, detail)"
            " VALUES (?, ?, ?, ?, 'staged', 'floor', ?)",
            [(d[1], d[0], d[1], "create", INTENT_DETAIL) for d in group],
        )
        self.con.execute("COMMIT")

    def put_rows(self, i: int, group: list) -> None:
        """Batch ``i``'s share of every table's rows, and its intents deleted (not committed)."""
        self.con.execute("BEGIN IMMEDIATE")
        for table, rows in self.rows.items():
            n = len(rows)
            insert_many(
                self.con,
                self.inserts[table],
                rows[i * n // self.batches : (i + 1) * n // self.batches],
            )
        doc_ids = [d[1] for d in group]
        for start in range(0, len(doc_ids), ROWS_AT_ONCE):
            chunk = doc_ids[start : start + ROWS_AT_ONCE]
            self.con.execute(
                f"DELETE FROM intents WHERE doc_id IN ({', '.join('?' * len(chunk))})", chunk
            )

    def commit(self) -> None:
        self.con.execute("COMMIT")

    def close(self) -> None:
        self.con.close()


#: What docwatch stores with a new document's intent (its staged directory, nothing to replace).
INTENT_DETAIL = json.dumps(
    {"add": [], "dir": ".tmp/floor/" + "0" * 48, "remove": [], "replace": []}
)


#: Rows a statement, as docwatch's SQLite index inserts them (``store/sqlite.py``).
ROWS_AT_ONCE = 128


def insert_many(con: sqlite3.Connection, insert: str, rows: list) -> None:
    """``rows`` through ``insert`` (one row's ``VALUES (…)``), up to ROWS_AT_ONCE rows a
    statement: the GIL let go once a chunk, not once a row."""
    head, _, one_row = insert.rpartition(" VALUES ")
    limit = con.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    step = max(1, min(ROWS_AT_ONCE, limit // max(1, one_row.count("?"))))
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        values = ", ".join([one_row] * len(chunk))
        con.execute(f"{head} VALUES {values}", [v for row in chunk for v in row])


def _insert_sql(con: sqlite3.Connection, table: str) -> str:
    columns = [d[0] for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description]
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
