"""The PostgreSQL backend (``index_url = "postgresql://…"``): one index for several hosts.

The same tables and SQL as SQLite (``store/index.py``); what differs is here: the driver
(psycopg 3, the ``postgres`` extra), the schema version (table ``docwatch_schema``), and how
several writers share the index.  A writer holds a session-level advisory lock per task it
plans, from planning to its last commit, taken with ``pg_try_advisory_lock`` in task order: a
task another writer holds is left for later, never waited for, so writers never deadlock and
a task is planned by one writer at a time.  Locks die with their connection (a killed writer
holds nothing).  Credentials come from the URL, ``PGPASSFILE`` or the ``PG*`` environment, and
are never logged (``redact``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from docwatch.configvalues import redact_url as redact
from docwatch.errors import ConfigInvalid, IndexBusy, IndexCorrupt, IndexUnreadable
from docwatch.store.index import Index
from docwatch.store.schema import MIGRATIONS, SCHEMA_VERSION, statements

_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS docwatch_schema (version INTEGER NOT NULL)"
#: pg_advisory_xact_lock key that serialises migrations of one database.
_MIGRATION_LOCK = 0x646F6377  # "docw"
#: Shared by every writer for its lifetime; exclusive for rebuild-index.
_USERS_LOCK = 0x646F6378


def task_lock_key(stage: str, task_id: str) -> int:
    """A signed 64-bit advisory-lock key for one task (collisions only cost contention)."""
    digest = hashlib.blake2b(f"{stage}\0{task_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Row(tuple):
    """A result row that reads by position and by column name (as sqlite3.Row does)."""

    names: tuple[str, ...] = ()

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> tuple[str, ...]:
        return self.names


def _row_factory(cursor: Any):
    names = tuple(c.name for c in cursor.description or ())
    cls = type("Row", (Row,), {"names": names, "__slots__": ()})
    return lambda values: cls(values)


class PostgresIndex(Index):
    dialect = "postgres"
    begin_sql = "BEGIN"
    byte_order = ' COLLATE "C"'

    def __init__(self, con: Any, url: str, *, readonly: bool, schema_version: int) -> None:
        super().__init__(con, redact(url), readonly=readonly, schema_version=schema_version)
        self.url = url
        self._held: set[int] = set()
        self._claims: list[tuple[str, tuple]] = []  # (sql, params) to take again on reopen

    def transient(self, exc: BaseException) -> bool:
        import psycopg

        retry = (psycopg.OperationalError, psycopg.errors.SerializationFailure)
        return isinstance(exc, retry) or self.con.closed

    def reopen(self) -> None:
        """A new connection after the old one broke (server restart, network): the advisory
        locks died with it, so the claims are taken again; task locks are per batch."""
        import psycopg

        if not self.con.closed:
            try:
                self.con.close()
            except psycopg.Error:
                pass
        self.con = psycopg.connect(self.url, autocommit=True, row_factory=_row_factory)
        self._held.clear()
        for sql, params in self._claims:
            if not self.con.execute(sql, params).fetchone()[0]:
                raise IndexBusy(f"{self.location}: lost this writer's claim on reconnecting")

    def sql(self, text: str) -> str:
        """``?`` placeholders become psycopg's ``%s`` (a literal ``%`` is doubled)."""
        return _PLACEHOLDER.sub("%s", text.replace("%", "%%"))

    def execute(self, text: str, params: Iterable = ()) -> Any:
        return self.con.execute(self.sql(text), tuple(params), prepare=True)

    def executemany(self, text: str, rows: Iterable) -> None:
        rows = list(rows)
        if rows:
            with self.con.cursor() as cur:
                cur.executemany(self.sql(text), rows)

    # -- several writers -------------------------------------------------------------------

    def lock_tasks(self, tasks: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Take each task's advisory lock that no other writer holds; return those taken."""
        taken = set()
        for task in sorted(set(tasks)):
            key = task_lock_key(*task)
            if key in self._held:
                taken.add(task)
                continue
            row = self.con.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if row[0]:
                self._held.add(key)
                taken.add(task)
        return taken

    def wait_tasks(self, tasks: Iterable[tuple[str, str]], timeout: float = 60.0) -> None:
        self.con.execute(f"SET lock_timeout = '{int(timeout * 1000)}ms'")
        try:
            for task in sorted(set(tasks)):
                key = task_lock_key(*task)
                if key not in self._held:
                    self.con.execute("SELECT pg_advisory_lock(%s)", (key,))
                    self._held.add(key)
        finally:
            self.con.execute("SET lock_timeout = 0")

    def unlock_tasks(self) -> None:
        for key in sorted(self._held):
            self.con.execute("SELECT pg_advisory_unlock(%s)", (key,))
        self._held.clear()

    def claim_users(self, *, exclusive: bool) -> None:
        """Writers share this claim for their lifetime; ``rebuild-index`` needs it alone."""
        fn = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
        sql = f"SELECT {fn}(%s)"
        if self.con.execute(sql, (_USERS_LOCK,)).fetchone()[0]:
            self._claims.append((sql, (_USERS_LOCK,)))
        else:
            raise IndexBusy(
                f"{self.location}: "
                + (
                    "a docwatch scan, watch or repair (on some host) is using this index; "
                    "stop them first, then rebuild"
                    if exclusive
                    else "`docwatch rebuild-index` is rebuilding this index; retry after it"
                )
            )

    def move_aside(self) -> str:
        """Move every docwatch table to a new schema ``docwatch_bak_<time>`` (never dropped)
        and create the schema afresh; returns the backup schema's name."""
        import time

        backup = f"docwatch_bak_{time.strftime('%Y%m%dT%H%M%S')}"
        with self.con.transaction():
            self.con.execute(f'CREATE SCHEMA "{backup}"')
            for table in _TABLES:
                if self.con.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]:
                    self.con.execute(f'ALTER TABLE {table} SET SCHEMA "{backup}"')
        _migrate(self.con, self.location)
        return backup

    def claim_daemon(self, instance: str) -> None:
        """One ``docwatch watch`` per instance (host) and index; held until the process ends."""
        key = task_lock_key("daemon", instance)
        sql = "SELECT pg_try_advisory_lock(%s)"
        if self.con.execute(sql, (key,)).fetchone()[0]:
            self._claims.append((sql, (key,)))
        else:
            holder = self.get_state(f"daemon:{instance}") or "unknown"
            raise IndexBusy(
                f"{self.location}: another `docwatch watch` ({holder}) already indexes for "
                f"instance {instance!r}; stop it first, or give this one another instance_name"
            )
        import os
        import socket

        with self.transaction():
            self.set_state(f"daemon:{instance}", f"pid {os.getpid()} on {socket.gethostname()}")


_PLACEHOLDER = re.compile(r"\?")
_TABLES = (
    "documents",
    "attempts",
    "sources",
    "problems",
    "intents",
    "state",
    "tasks",
    "docwatch_schema",
)


def open_postgres(url: str, *, readonly: bool = False) -> PostgresIndex:
    """Connect; create and migrate the schema unless read-only; every failure explained."""
    try:
        import psycopg
    except ImportError:
        raise ConfigInvalid(
            f"index_url {redact(url)}: the PostgreSQL backend needs psycopg; install it with "
            "pip install 'docwatch[postgres]'"
        ) from None
    try:
        con = psycopg.connect(url, autocommit=True, row_factory=_row_factory, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise _connect_error(url, exc) from None
    try:
        if readonly:
            con.execute("SET default_transaction_read_only = on")
            version = _check_version(con, url)
        else:
            _migrate(con, url)
            version = SCHEMA_VERSION
    except psycopg.errors.InsufficientPrivilege as exc:
        con.close()
        raise IndexUnreadable(f"{redact(url)}: permission denied: {_first_line(exc)}") from None
    except BaseException:
        con.close()
        raise
    return PostgresIndex(con, url, readonly=readonly, schema_version=version)


def _version(con: Any) -> int | None:
    exists = con.execute("SELECT to_regclass('docwatch_schema') IS NOT NULL").fetchone()[0]
    if not exists:
        return None
    row = con.execute("SELECT max(version) FROM docwatch_schema").fetchone()
    return row[0] or 0


def _check_version(con: Any, url: str) -> int:
    """The index's schema version, refused if missing or newer than this docwatch."""
    version = _version(con)
    if version is None:
        raise IndexCorrupt(f"{redact(url)}: no docwatch index in this database; run a scan first")
    if version > SCHEMA_VERSION:
        raise IndexCorrupt(
            f"{redact(url)}: schema version {version} is newer than this docwatch "
            f"({SCHEMA_VERSION}); upgrade docwatch"
        )
    return version


def _migrate(con: Any, url: str) -> None:
    """Bring the schema to SCHEMA_VERSION in one transaction; concurrent writers wait."""
    with con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        con.execute(_VERSION_TABLE)
        version = _version(con) or 0
        if version > SCHEMA_VERSION:
            raise IndexCorrupt(
                f"{redact(url)}: schema version {version} is newer than this docwatch "
                f"({SCHEMA_VERSION}); upgrade docwatch"
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in statements(MIGRATIONS[step]):
                con.execute(_pg_ddl(statement))
        if version < SCHEMA_VERSION:
            con.execute("DELETE FROM docwatch_schema")
            con.execute("INSERT INTO docwatch_schema (version) VALUES (%s)", (SCHEMA_VERSION,))


def _pg_ddl(statement: str) -> str:
    """Nanosecond times need 64 bits: PostgreSQL's INTEGER is 32."""
    return re.sub(r"\bINTEGER\b", "BIGINT", statement)


def _connect_error(url: str, exc: Exception) -> Exception:
    text = _first_line(exc)
    if "password authentication failed" in text or "permission denied" in text:
        return IndexUnreadable(f"{redact(url)}: cannot connect: {text}")
    if "does not exist" in text and "database" in text:
        return IndexCorrupt(f"{redact(url)}: {text}; create the database first (README)")
    return IndexCorrupt(f"{redact(url)}: cannot connect: {text}")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
