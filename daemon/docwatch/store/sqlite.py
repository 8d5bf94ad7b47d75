"""The SQLite backend: ``<data-root>/db/documents.sqlite``, WAL, one writer at a time.

Readers may be other users than the writer (SPEC "Guarantees").  SQLite lets a user without
write permission on ``db/`` read a WAL index only while its ``-wal`` and ``-shm`` files exist
(SQLite >= 3.22 then reads the WAL itself), and the last connection to close deletes them.  So
every writer that closes re-creates them empty, with the index file's mode: an index any
docwatch writer has touched stays readable by everyone who may read the file.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from docwatch.errors import IndexCorrupt, IndexUnreadable
from docwatch.store.index import Index
from docwatch.store.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLITE_DDL,
    SQLITE_ONLY,
    statements,
)
from docwatch.store.sqltext import values_rows_sql
from docwatch.store.sweeps import folder_range

#: Messages of errors that mean "the file is not a (sound) SQLite database".
_CORRUPT = ("file is not a database", "malformed", "not a database", "file is encrypted")
_BUSY = ("locked", "busy")
READER_FILES = ("-wal", "-shm")
#: A writer's commits flush the -wal (durable once committed); one the batch's syncfs flushes
#: is made with NORMAL instead (``SqliteIndex._flush_commits``).
SYNCHRONOUS = "FULL"


class SqliteIndex(Index):
    dialect = "sqlite"
    begin_sql = "BEGIN IMMEDIATE"

    def __init__(
        self, con: sqlite3.Connection, path: Path, *, readonly: bool, schema_version: int
    ) -> None:
        super().__init__(con, str(path), readonly=readonly, schema_version=schema_version)
        self.path = path

    def executemany(self, text: str, rows: Iterable[Sequence]) -> None:
        """An ``INSERT`` of many rows as a few statements of many rows each (the same rows in
        the same order, so an upsert meets its own earlier rows as one-a-row would); any
        other statement as ``executemany``."""
        rows = list(rows)
        if len(rows) < 2 or values_rows_sql(text, 1) is None:
            return super().executemany(text, rows)
        for size, chunk in row_chunks(rows, values_at_once(self.con) // len(rows[0])):
            self.con.execute(values_rows_sql(text, size), [v for row in chunk for v in row])

    def flushed_by_syncfs(self, path: str | Path) -> bool:
        """The index file (and its ``-wal``) on the filesystem of ``path``: the same device."""
        try:
            return os.stat(path).st_dev == os.stat(self.path.parent).st_dev
        except OSError:
            return False

    def _flush_commits(self, on: bool) -> None:
        # NORMAL in WAL mode: a commit is written to the -wal file, not fsynced.
        self.con.execute(f"PRAGMA synchronous = {SYNCHRONOUS if on else 'NORMAL'}")

    def close(self) -> None:
        super().close()
        if not self.readonly:
            leave_reader_files(self.path)

    def corruption(self, exc: BaseException) -> str | None:
        if isinstance(exc, sqlite3.DatabaseError) and any(w in str(exc) for w in _CORRUPT):
            return (
                f"{self.path}: the index is damaged ({exc}). Stop docwatch, move the file aside "
                "and run `docwatch rebuild-index` to recreate it from the documents."
            )
        return None

    def ledger_in_folder(self, folder: str, page: int = 5000) -> Iterator[Sequence]:
        """As ``SweepQueries.ledger_in_folder``, in one statement: SQLite steps through its
        covering index as rows are fetched, so nothing is held and no page re-seeks."""
        low, high = folder_range(folder)
        yield from self._stream(
            "SELECT relpath, seen_size, seen_mtime_ns FROM sources"
            " WHERE relpath >= ? AND relpath < ? ORDER BY relpath, sha256",
            (low, high),
            page,
        )

    def doc_ids(self, page: int = 10000) -> Iterator[str]:
        """As ``SweepQueries.doc_ids``, in one statement over the primary key."""
        for row in self._stream("SELECT doc_id FROM documents ORDER BY doc_id", (), page):
            yield row[0]

    def _stream(self, sql: str, params: tuple, page: int) -> Iterator[tuple]:
        """Rows of one statement as plain tuples, fetched ``page`` at a time."""
        cur = self.con.cursor()
        cur.row_factory = None  # tuples: a bulk read makes no sqlite3.Row per row
        try:
            cur.execute(sql, params)
            while rows := cur.fetchmany(page):
                yield from rows
        finally:
            cur.close()

    def transient(self, exc: BaseException) -> bool:
        text = str(exc)
        return isinstance(exc, sqlite3.OperationalError) and any(
            word in text for word in ("locked", "busy", "disk I/O", "full")
        )


#: Rows an INSERT takes at once: more than this saves nothing measurable (bench/README.md).
ROWS_AT_ONCE = 128


def values_at_once(con: sqlite3.Connection) -> int:
    """How many values one statement binds at most: enough for ROWS_AT_ONCE rows of up to
    32 columns, within this SQLite's limit (32,766 by default, 999 before 3.32)."""
    return min(con.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER), 32 * ROWS_AT_ONCE)


def row_chunks(rows: list, most: int) -> Iterator[tuple[int, list]]:
    """``rows`` in chunks of a power of two rows, ``most`` at most (at least 1): full chunks,
    then the rest in halves, so a statement cache holds a few texts, not one a length."""
    size = 1
    while size * 2 <= min(most, ROWS_AT_ONCE):
        size *= 2
    start = 0
    while start < len(rows):
        while len(rows) - start < size:
            size //= 2
        yield size, rows[start : start + size]
        start += size


def open_sqlite(
    path: Path, *, readonly: bool = False, busy_timeout_ms: int = 10_000
) -> SqliteIndex:
    """Open the index; create and migrate it unless read-only; every failure explained."""
    path = Path(path)
    if path.parent.exists() and not os.access(path.parent, os.X_OK):
        raise unreadable(path.parent, "search (x)")  # before path.exists(): it raises then
    if readonly and not path.exists():
        raise IndexCorrupt(f"{path}: no index here; run `docwatch scan` first")
    try:
        if readonly:
            con = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise open_error(exc, path, readonly) from exc
    con.row_factory = sqlite3.Row
    try:
        con.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if readonly:
            version = check_version(con, path)
        else:
            _wal(con, busy_timeout_ms / 1000)
            con.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
            migrate(con, path)
            version = SCHEMA_VERSION
    except sqlite3.Error as exc:
        con.close()
        if any(word in str(exc) for word in _BUSY):
            raise
        raise open_error(exc, path, readonly) from exc
    except BaseException:
        con.close()
        raise
    return SqliteIndex(con, path, readonly=readonly, schema_version=version)


def _wal(con: sqlite3.Connection, timeout: float) -> None:
    """WAL mode (kept in the file); switching needs the database alone, which the busy
    handler does not wait for, so a writer opening beside another retries for a while."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                con.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def check_version(con: sqlite3.Connection, path: Path) -> int:
    """The index's schema version, refused if newer than this docwatch."""
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise IndexCorrupt(
            f"{path}: schema version {version} is newer than this docwatch "
            f"({SCHEMA_VERSION}); upgrade docwatch"
        )
    return version


def migrate(con: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION, all steps in one transaction."""
    con.execute("BEGIN IMMEDIATE")
    try:
        check_version(con, path)
        version = con.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version, SCHEMA_VERSION):
            for statement in statements(MIGRATIONS[step]) + statements(
                SQLITE_DDL.get(step + 1, "")
            ):
                con.execute(statement)
            if version > 0:  # an index with rows from an older docwatch
                for statement in statements(SQLITE_ONLY.get(step + 1, "")):
                    con.execute(statement)
            con.execute(f"PRAGMA user_version = {step + 1}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def open_error(exc: sqlite3.Error, path: Path, readonly: bool) -> Exception:
    """What an open failure means: a corrupt file, a missing permission, or something else."""
    text = str(exc)
    if any(word in text for word in _CORRUPT):
        return IndexCorrupt(
            f"{path}: not a usable SQLite index ({text}). Move it aside and run "
            "`docwatch rebuild-index` to recreate it from the documents' metadata.json files."
        )
    problem = permission_problem(path, readonly)
    if problem is not None:
        return problem
    return IndexCorrupt(f"{path}: cannot open the index ({text})")


def permission_problem(path: Path, readonly: bool) -> IndexUnreadable | None:
    """The missing permission that keeps this user from opening the index, if that is it."""
    folder = path.parent
    if folder.exists() and not os.access(folder, os.X_OK):
        return unreadable(folder, "search (x)")
    if path.exists() and not os.access(path, os.R_OK):
        return unreadable(path, "read (r)")
    if not readonly:
        for target in (folder, path, *(Path(f"{path}{s}") for s in READER_FILES)):
            if target.exists() and not os.access(target, os.W_OK):
                return unreadable(target, "write (w)", writer=True)
        return None
    missing = [s for s in READER_FILES if not Path(f"{path}{s}").exists()]
    if missing and not os.access(folder, os.W_OK):
        return IndexUnreadable(
            f"{path}: cannot read the index as uid {os.geteuid()}: SQLite needs "
            f"{', '.join(path.name + s for s in missing)} next to it, which are missing, and "
            f"this user lacks write (w) permission on {folder} to create them. Any docwatch "
            "writer (`docwatch scan` or `watch`, as the user that owns the index) leaves them "
            "for readers when it stops; run one once."
        )
    for suffix in READER_FILES:
        extra = Path(f"{path}{suffix}")
        if extra.exists() and not os.access(extra, os.R_OK):
            return unreadable(extra, "read (r)")
    return None


def unreadable(path: Path, permission: str, *, writer: bool = False) -> IndexUnreadable:
    who = "docwatch's user" if writer else f"uid {os.geteuid()}"
    return IndexUnreadable(f"{path}: permission denied: {who} lacks {permission} permission on it")


def leave_reader_files(path: Path) -> None:
    """Re-create empty ``-wal``/``-shm`` files (the index's mode) if the close removed them."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    for suffix in READER_FILES:
        try:
            fd = os.open(f"{path}{suffix}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.EACCES, errno.EROFS):
                raise
            continue
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
        finally:
            os.close(fd)
