"""The big task tables kept on disk, so memory stays flat in the number of tasks.

A task table of a large tree has hundreds of thousands of rows (~130 MiB as Python objects at
1M files).  Each parse writes its rows into a private temporary SQLite database (SQLite puts
it in ``$SQLITE_TMPDIR``, ``$TMPDIR``, ``/var/tmp`` or ``/tmp``, already unlinked; it is gone
when the table is), and lookups read it through a small page cache and a bounded memo.
Nothing here touches the watched folders.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Mapping

from docwatch.core.tasks import Cells, Row

#: Rows inserted per ``executemany`` while a table is parsed.
INSERT_BATCH = 5000
#: Rows remembered per table: a task is looked up several times while one batch is planned.
MEMO_ROWS = 1024
#: SQLite's page cache per table, in KiB (negative ``cache_size``); the rest stays on disk.
CACHE_KIB = 2048


class DiskTable(Mapping[str, Row]):
    """A read-only ``key → Cells`` mapping over a private temporary SQLite database."""

    def __init__(self, conn: sqlite3.Connection, columns: tuple[str, ...]) -> None:
        self._conn = conn
        self._lock = threading.Lock()  # one connection, maybe several planning threads
        self._row_of = Cells.of_columns(columns)
        weakref.finalize(self, conn.close)  # closed, not just collected (no ResourceWarning)
        self._memo = _memoised_select(conn, self._lock, self._row_of)

    def get(self, key: str, default: Row | None = None) -> Row | None:  # type: ignore[override]
        row = self._memo(key) if isinstance(key, str) else None
        return default if row is None else row

    def __getitem__(self, key: str) -> Row:
        row = self.get(key)
        if row is None:
            raise KeyError(key)
        return row

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._memo(key) is not None

    def __iter__(self) -> Iterator[str]:
        # Every key at once: the daemon only looks rows up; iterating is for tests.
        with self._lock:
            keys = [k for (k,) in self._conn.execute("SELECT k FROM t ORDER BY k")]
        return iter(keys)

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM t").fetchone()[0]

    def __repr__(self) -> str:
        return f"<DiskTable of {len(self)} rows, columns {self._row_of.columns}>"


def _memoised_select(
    conn: sqlite3.Connection, lock: threading.Lock, row_of: type[Cells]
) -> functools._lru_cache_wrapper:
    """One row by key, remembered (built apart from the table: no cycle keeps it alive)."""

    @functools.lru_cache(maxsize=MEMO_ROWS)
    def select(key: str) -> Row | None:
        with lock:
            found = conn.execute("SELECT * FROM t WHERE k = ?", (key,)).fetchone()
        return None if found is None else row_of(found[1:])

    return select


class DiskBuilder:
    """Writes parsed rows into a fresh temporary database (a ``core.tasks.TableBuilder``).

    A key seen twice keeps its last row, as a dict would.
    """

    def __init__(self, columns: tuple[str, ...]) -> None:
        self.columns = columns
        # "" is SQLite's private temporary on-disk database; no journal: a failed parse drops it.
        self.conn = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self._finalizer = weakref.finalize(self, self.conn.close)  # a parse that fails
        self.conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self.conn.execute("PRAGMA journal_mode = OFF")
        cells = "".join(f", c{i}" for i in range(len(columns)))
        self.conn.execute(f"CREATE TABLE t (k TEXT PRIMARY KEY{cells}) WITHOUT ROWID")
        self._insert = f"INSERT OR REPLACE INTO t VALUES (?{', ?' * len(columns)})"
        self._pending: list[tuple[str, ...]] = []
        self.conn.execute("BEGIN")

    def put(self, key: str, cells: list[str]) -> None:
        self._pending.append((key, *cells))
        if len(self._pending) >= INSERT_BATCH:
            self._flush()

    def _flush(self) -> None:
        self.conn.executemany(self._insert, self._pending)
        self._pending.clear()

    def table(self) -> DiskTable:
        self._flush()
        self.conn.execute("COMMIT")
        self._finalizer.detach()
        return DiskTable(self.conn, self.columns)
