"""The SQLite index: schema and migrations, the documents table, the source ledger.

One writer at a time (guarded by ``locks.WriterLock``), any number of readers (WAL).
Every statement is parametrised.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from docwatch.core.model import ParentCandidate, Source
from docwatch.errors import IndexCorrupt

DOCUMENT_COLUMNS = (
    "doc_id",
    "logical_key_id",
    "stage",
    "task_id",
    "parent_doc_id",
    "template_id",
    "model_id",
    "run_id",
    "prompt_path",
    "parser",
    "status",
    "usage_prompt_tokens",
    "usage_completion_tokens",
    "usage_max_tokens",
    "created_at",
    "doc_dir",
    "raw_chars",
    "parsed_chars",
    "meta_small",
    "lineage_prev_doc_id",
)

ATTEMPT_COLUMNS = (
    "doc_id",
    "version",
    "created_at_ns",
    "parent_stage",
    "parent_task_id",
    "parent_ref_ns",
    "raw_key",
    "parsed_key",
    "prompt_key",
    "info_hash",
)

SOURCE_COLUMNS = (
    "relpath",
    "sha256",
    "stage",
    "kind",
    "task_id",
    "version",
    "size",
    "mtime_ns",
)

# Each entry migrates from user_version == index to index + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE documents (
      doc_id TEXT PRIMARY KEY,
      logical_key_id TEXT,
      stage TEXT,
      task_id TEXT,
      parent_doc_id TEXT,
      template_id TEXT,
      model_id TEXT,
      run_id TEXT,
      prompt_path TEXT,
      parser TEXT,
      status TEXT,
      usage_prompt_tokens INTEGER,
      usage_completion_tokens INTEGER,
      usage_max_tokens INTEGER,
      created_at TEXT,
      doc_dir TEXT,
      raw_chars INTEGER,
      parsed_chars INTEGER,
      meta_small TEXT,
      lineage_prev_doc_id TEXT
    );
    CREATE INDEX idx_documents_logical ON documents(logical_key_id, created_at);
    CREATE INDEX idx_documents_stage ON documents(stage, created_at);
    CREATE INDEX idx_documents_task ON documents(stage, task_id, created_at);
    -- Per-document facts the model needs that are not seed columns.
    CREATE TABLE attempts (
      doc_id TEXT PRIMARY KEY,
      version INTEGER NOT NULL,
      created_at_ns INTEGER NOT NULL,
      parent_stage TEXT,
      parent_task_id TEXT,
      parent_ref_ns INTEGER,
      raw_key TEXT,
      parsed_key TEXT,
      prompt_key TEXT
    );
    CREATE INDEX idx_attempts_parent ON attempts(parent_stage, parent_task_id);
    -- The ledger: every source version ingested, so re-runs skip without reading files.
    CREATE TABLE sources (
      relpath TEXT NOT NULL,
      sha256 TEXT NOT NULL,
      stage TEXT NOT NULL,
      kind TEXT NOT NULL,
      task_id TEXT NOT NULL,
      version INTEGER NOT NULL,
      size INTEGER NOT NULL,
      mtime_ns INTEGER NOT NULL,
      ingested_at TEXT NOT NULL,
      PRIMARY KEY (relpath, sha256)
    );
    CREATE INDEX idx_sources_task ON sources(stage, task_id);
    -- Sources that could not be ingested, with the reason (cleared when ingested).
    CREATE TABLE problems (
      relpath TEXT PRIMARY KEY,
      reason TEXT NOT NULL,
      seen_at TEXT NOT NULL
    );
    -- Documents a batch is about to create or change (cleared by its commit).
    CREATE TABLE intents (
      doc_id TEXT PRIMARY KEY,
      stage TEXT NOT NULL,
      task_id TEXT NOT NULL,
      op TEXT NOT NULL
    );
    CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT);
    """,
    # v2: what the task tables said when a document was planned, to re-plan on a change.
    """
    ALTER TABLE attempts ADD COLUMN info_hash TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def source_key(relpath: str, sha256: str) -> str:
    return f"{sha256}:{relpath}"


def split_source_key(key: str) -> tuple[str, str]:
    sha, _, relpath = key.partition(":")
    return relpath, sha


def connect(db_path: Path, *, readonly: bool = False, busy_timeout_ms: int = 10_000):
    """Open the index; create and migrate it unless read-only; refuse a corrupt file."""
    if readonly:
        if not db_path.exists():
            raise IndexCorrupt(f"{db_path}: no index here; run `docwatch scan` first")
        uri = f"file:{db_path}?mode=ro"
        con = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    else:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    try:
        con.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if not readonly:
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = FULL")
            migrate(con)
        else:
            check_version(con, db_path)
    except sqlite3.DatabaseError as exc:
        con.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise
        raise IndexCorrupt(
            f"{db_path}: not a usable SQLite index ({exc}). Move it aside and run "
            f"`docwatch rebuild-index` to recreate it from the documents' metadata.json files."
        ) from exc
    return con


def check_version(con: sqlite3.Connection, db_path: Path) -> None:
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise IndexCorrupt(
            f"{db_path}: schema version {version} is newer than this docwatch "
            f"({SCHEMA_VERSION}); upgrade docwatch"
        )


def migrate(con: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION, one migration per transaction."""
    con.execute("BEGIN IMMEDIATE")
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version} is newer than {SCHEMA_VERSION}")
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute(f"PRAGMA user_version = {step + 1}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


@contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- ledger -------------------------------------------------------------------------------


def ledger_stats(con: sqlite3.Connection) -> dict[str, tuple[int, int] | set]:
    """relpath → (size, mtime_ns) of its ingested version (a set when there are several)."""
    stats: dict[str, tuple[int, int] | set] = {}
    for relpath, size, mtime_ns in con.execute("SELECT relpath, size, mtime_ns FROM sources"):
        seen = stats.get(relpath)
        if seen is None:
            stats[relpath] = (size, mtime_ns)
        elif isinstance(seen, tuple):
            stats[relpath] = {seen, (size, mtime_ns)}
        else:
            seen.add((size, mtime_ns))
    return stats


def in_ledger_stats(stats: dict, relpath: str, size: int, mtime_ns: int) -> bool:
    """The no-read skip: has this exact (size, mtime) of this path been ingested?"""
    seen = stats.get(relpath)
    return seen == (size, mtime_ns) or (isinstance(seen, set) and (size, mtime_ns) in seen)


def ledger_has_stat(con: sqlite3.Connection, relpath: str, size: int, mtime_ns: int) -> bool:
    row = con.execute(
        "SELECT 1 FROM sources WHERE relpath = ? AND size = ? AND mtime_ns = ?",
        (relpath, size, mtime_ns),
    ).fetchone()
    return row is not None


def task_sources(con: sqlite3.Connection, stage: str, task_id: str) -> list[Source]:
    rows = con.execute(
        f"SELECT {', '.join(SOURCE_COLUMNS)} FROM sources WHERE stage = ? AND task_id = ?",
        (stage, task_id),
    )
    return [_source(r) for r in rows]


def _source(r: sqlite3.Row) -> Source:
    return Source(
        stage=r["stage"],
        kind=r["kind"],
        relpath=r["relpath"],
        task_id=r["task_id"],
        version=r["version"],
        mtime_ns=r["mtime_ns"],
        size=r["size"],
        sha256=r["sha256"],
    )


def put_sources(con: sqlite3.Connection, sources: Iterable[Source]) -> None:
    ingested = now_iso()
    con.executemany(
        "INSERT INTO sources (relpath, sha256, stage, kind, task_id, version, size, mtime_ns,"
        " ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (relpath, sha256) DO UPDATE SET size = excluded.size,"
        " mtime_ns = excluded.mtime_ns",
        [
            (
                s.relpath,
                s.sha256,
                s.stage,
                s.kind,
                s.task_id,
                s.version,
                s.size,
                s.mtime_ns,
                ingested,
            )
            for s in sources
        ],
    )
    con.executemany("DELETE FROM problems WHERE relpath = ?", [(s.relpath,) for s in sources])


def put_problems(con: sqlite3.Connection, problems: Iterable[tuple[str, str]]) -> None:
    seen = now_iso()
    con.executemany(
        "INSERT INTO problems (relpath, reason, seen_at) VALUES (?, ?, ?)"
        " ON CONFLICT (relpath) DO UPDATE SET reason = excluded.reason, seen_at = excluded.seen_at",
        [(relpath, reason, seen) for relpath, reason in problems],
    )


# --- documents ----------------------------------------------------------------------------


def row_to_dict(row: sqlite3.Row) -> dict:
    out = dict(row)
    if isinstance(out.get("meta_small"), str):
        out["meta_small"] = json.loads(out["meta_small"])
    return out


def task_documents(con: sqlite3.Connection, stage: str, task_id: str) -> dict[str, dict]:
    rows = con.execute(
        "SELECT d.*, a.version AS _version, a.created_at_ns AS _created_at_ns,"
        " a.parent_stage AS _parent_stage, a.parent_task_id AS _parent_task_id,"
        " a.parent_ref_ns AS _parent_ref_ns, a.raw_key AS _raw_key,"
        " a.parsed_key AS _parsed_key, a.prompt_key AS _prompt_key"
        " FROM documents d JOIN attempts a USING (doc_id) WHERE d.stage = ? AND d.task_id = ?",
        (stage, task_id),
    )
    return {r["doc_id"]: row_to_dict(r) for r in rows}


def get_documents(con: sqlite3.Connection, doc_ids: Iterable[str]) -> dict[str, dict]:
    out = {}
    for doc_id in doc_ids:
        row = con.execute(
            "SELECT d.*, a.version AS _version, a.created_at_ns AS _created_at_ns,"
            " a.parent_stage AS _parent_stage, a.parent_task_id AS _parent_task_id,"
            " a.parent_ref_ns AS _parent_ref_ns, a.raw_key AS _raw_key,"
            " a.parsed_key AS _parsed_key, a.prompt_key AS _prompt_key"
            " FROM documents d JOIN attempts a USING (doc_id) WHERE d.doc_id = ?",
            (doc_id,),
        ).fetchone()
        if row is not None:
            out[doc_id] = row_to_dict(row)
    return out


def ok_candidates(con: sqlite3.Connection, stage: str, task_id: str) -> list[ParentCandidate]:
    rows = con.execute(
        "SELECT d.doc_id, a.created_at_ns, a.version FROM documents d JOIN attempts a"
        " USING (doc_id) WHERE d.stage = ? AND d.task_id = ? AND d.status = 'ok'",
        (stage, task_id),
    )
    return [ParentCandidate(r[0], r[1], r[2]) for r in rows]


def children_of(con: sqlite3.Connection, stage: str, task_id: str) -> list[tuple[str, str]]:
    """(stage, task_id) of documents whose parent task is the given one."""
    rows = con.execute(
        "SELECT DISTINCT d.stage, d.task_id FROM attempts a JOIN documents d USING (doc_id)"
        " WHERE a.parent_stage = ? AND a.parent_task_id = ?",
        (stage, task_id),
    )
    return [(r[0], r[1]) for r in rows]


def put_document(con: sqlite3.Connection, row: dict, attempt: dict) -> None:
    """Insert or replace one document row and its attempt facts."""
    values = [row[c] for c in DOCUMENT_COLUMNS]
    values[DOCUMENT_COLUMNS.index("meta_small")] = json.dumps(
        row["meta_small"], sort_keys=True, ensure_ascii=False
    )
    con.execute(
        f"INSERT OR REPLACE INTO documents ({', '.join(DOCUMENT_COLUMNS)})"
        f" VALUES ({', '.join('?' * len(DOCUMENT_COLUMNS))})",
        values,
    )
    con.execute(
        f"INSERT OR REPLACE INTO attempts ({', '.join(ATTEMPT_COLUMNS)})"
        f" VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})",
        [attempt.get(c) for c in ATTEMPT_COLUMNS],
    )


def delete_document(con: sqlite3.Connection, doc_id: str) -> None:
    con.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))
    con.execute("DELETE FROM attempts WHERE doc_id = ?", (doc_id,))


def task_info_hashes(con: sqlite3.Connection) -> list[tuple[str, str, str | None]]:
    """(stage, task_id, info_hash) of every task with documents."""
    rows = con.execute(
        "SELECT DISTINCT d.stage, d.task_id, a.info_hash FROM documents d JOIN attempts a"
        " USING (doc_id)"
    )
    return [(r[0], r[1], r[2]) for r in rows]


def pending_tasks(con: sqlite3.Connection, created_before: str) -> list[tuple[str, str]]:
    rows = con.execute(
        "SELECT DISTINCT stage, task_id FROM documents WHERE status = 'pending' AND created_at < ?",
        (created_before,),
    )
    return [(r[0], r[1]) for r in rows]


# --- intents and state --------------------------------------------------------------------


def put_intents(con: sqlite3.Connection, intents: Iterable[tuple[str, str, str, str]]) -> None:
    con.executemany(
        "INSERT OR REPLACE INTO intents (doc_id, stage, task_id, op) VALUES (?, ?, ?, ?)",
        list(intents),
    )


def take_intents(con: sqlite3.Connection) -> list[sqlite3.Row]:
    return con.execute("SELECT doc_id, stage, task_id, op FROM intents").fetchall()


def clear_intents(con: sqlite3.Connection, doc_ids: Iterable[str] | None = None) -> None:
    if doc_ids is None:
        con.execute("DELETE FROM intents")
    else:
        con.executemany("DELETE FROM intents WHERE doc_id = ?", [(d,) for d in doc_ids])


def document_exists(con: sqlite3.Connection, doc_id: str) -> bool:
    return con.execute("SELECT 1 FROM documents WHERE doc_id = ?", (doc_id,)).fetchone() is not None


def set_state(con: sqlite3.Connection, key: str, value: str) -> None:
    con.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))


def get_state(con: sqlite3.Connection, key: str) -> str | None:
    row = con.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None
