"""The index behind one interface, whatever engine holds it (SQLite or PostgreSQL).

``Index`` speaks the SQL both engines accept (``?`` placeholders, ``ON CONFLICT`` upserts) over
a DB-API connection in autocommit mode, with explicit transactions.  The backends
(``store/sqlite.py``, ``store/postgres.py``) open the connection, migrate the schema, and say
how a write transaction begins; everything the rest of docwatch asks of an index is here.
Every statement is parametrised.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docwatch.core.clock import now_iso
from docwatch.core.jsontext import sorted_text_json
from docwatch.core.model import ParentCandidate, Source, TaskInfo
from docwatch.store.readsql import LATEST, LATEST_BEFORE_V5, ROW, latest_sql
from docwatch.store.records import WriterRecords
from docwatch.store.schema import (
    ATTEMPT_COLUMNS,
    DOCUMENT_COLUMNS,
    DOCUMENT_ORDER_COLUMNS,
    SCHEMA_VERSION,
    SOURCE_COLUMNS,
    TASK_COLUMNS,
)
from docwatch.store.sqltext import marks, pair_values, upsert_sql
from docwatch.store.sweeps import SweepQueries, in_chunks, task_info_from_row

_ATTEMPT_SELECT = (
    "a.version AS _version, a.created_at_ns AS _created_at_ns,"
    " a.parent_stage AS _parent_stage, a.parent_task_id AS _parent_task_id,"
    " a.parent_ref_ns AS _parent_ref_ns, a.raw_key AS _raw_key,"
    " a.parsed_key AS _parsed_key, a.prompt_key AS _prompt_key"
)


def source_key(relpath: str, sha256: str) -> str:
    return f"{sha256}:{relpath}"


def split_source_key(key: str) -> tuple[str, str]:
    sha, _, relpath = key.partition(":")
    return relpath, sha


_PUT_DOCUMENT = upsert_sql("documents", DOCUMENT_COLUMNS + DOCUMENT_ORDER_COLUMNS, ["doc_id"])
_PUT_ATTEMPT = upsert_sql("attempts", ATTEMPT_COLUMNS, ["doc_id"])
_PUT_TASK = upsert_sql("tasks", TASK_COLUMNS, ["stage", "task_id"])
_PUT_SOURCE = (
    "INSERT INTO sources (relpath, sha256, stage, kind, task_id, version, size, mtime_ns,"
    " ingested_at, seen_size, seen_mtime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    # Pinned: a source already known keeps its first facts; only the stat cache moves.
    " ON CONFLICT (relpath, sha256) DO UPDATE SET seen_size = excluded.seen_size,"
    " seen_mtime_ns = excluded.seen_mtime_ns"
)


def row_to_dict(row: Any) -> dict:
    out = dict(row)
    if isinstance(out.get("meta_small"), str):
        out["meta_small"] = json.loads(out["meta_small"])
    return out


def source_from_row(r: Any) -> Source:
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


class Index(SweepQueries, WriterRecords):
    """One connection to the index.  Not thread-safe: one per thread (readers lock around it).

    ``location`` names the index in messages (a file path or a URL without its password).
    """

    dialect = "sql"
    #: How a write transaction begins (SQLite takes the write lock at once).
    begin_sql = "BEGIN"

    def __init__(
        self,
        con: Any,
        location: str,
        *,
        readonly: bool = False,
        schema_version: int = SCHEMA_VERSION,
    ) -> None:
        self.con = con
        self.location = location
        self.readonly = readonly
        self._in_transaction = False
        # A reader may open an index its daemon has not migrated yet (writers migrate).
        self._latest = LATEST if schema_version >= 5 else LATEST_BEFORE_V5

    # -- plumbing ------------------------------------------------------------------------

    def sql(self, text: str) -> str:
        """The statement in this engine's parameter style."""
        return text

    def execute(self, text: str, params: Iterable = ()) -> Any:
        return self.con.execute(self.sql(text), tuple(params))

    def executemany(self, text: str, rows: Iterable[Sequence]) -> None:
        rows = list(rows)
        if rows:
            self.con.executemany(self.sql(text), rows)

    def execute_in(self, text: str, values: Iterable, before: Sequence = ()) -> None:
        """``text`` ending in ``IN`` for every value, a chunk of values a statement (not a
        statement a value); ``before`` are the parameters ahead of the list."""
        for chunk in in_chunks(list(values)):
            self.execute(f"{text} ({marks(chunk)})", [*before, *chunk])

    def all(self, text: str, params: Iterable = ()) -> list[dict]:
        return [dict(r) for r in self.execute(text, params).fetchall()]

    def one(self, text: str, params: Iterable = ()) -> dict | None:
        row = self.execute(text, params).fetchone()
        return dict(row) if row is not None else None

    def scalar(self, text: str, params: Iterable = ()) -> Any:
        row = self.execute(text, params).fetchone()
        return None if row is None else next(iter(dict(row).values()))

    @contextmanager
    def transaction(self, *, flush: bool = True) -> Iterator[Index]:
        """One write transaction, rolled back on any error.  ``flush=False``: the commit is
        written but not flushed to the disk; only for a caller whose next step is a ``syncfs``
        that ``flushed_by_syncfs`` says covers this index."""
        if not flush:
            self._flush_commits(False)
        try:
            self.con.execute(self.begin_sql)
            self._in_transaction = True
            try:
                yield self
            except BaseException:
                self._in_transaction = False
                self.con.execute("ROLLBACK")
                raise
            self._in_transaction = False
            self.con.execute("COMMIT")
        finally:
            if not flush:
                self._flush_commits(True)

    def flushed_by_syncfs(self, path: str | Path) -> bool:
        """Whether a ``syncfs`` of the filesystem holding ``path`` also makes this index's
        commits durable (an index file on that filesystem: yes; a server: never)."""
        return False

    def _flush_commits(self, on: bool) -> None:
        """Whether each commit flushes itself (on, the default); a server always does."""

    def close(self) -> None:
        self.con.close()

    def transient(self, exc: BaseException) -> bool:
        """Whether a database error is worth retrying (busy, locked, connection lost)."""
        return False

    def corruption(self, exc: BaseException) -> str | None:
        """What to tell the operator when ``exc`` says the index itself is damaged."""
        return None

    def reopen(self) -> None:
        """Reconnect after a lost connection (a no-op for a local file)."""

    # -- several writers (SQLite has one at a time: its writer lock) -----------------------

    def lock_tasks(self, tasks: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """The tasks this writer may plan now (all of them, when it is the only writer)."""
        return set(tasks)

    def wait_tasks(self, tasks: Iterable[tuple[str, str]], timeout: float = 60.0) -> None:
        """Take these tasks' locks, waiting for a writer that still holds them (recovery of a
        shared index: a killed writer's session may still be finishing its commit)."""

    def unlock_tasks(self) -> None:
        """Give back the tasks ``lock_tasks`` and ``wait_tasks`` took."""

    # -- the ledger ----------------------------------------------------------------------

    def ledger_seen(self, relpaths: Iterable[str]) -> Callable[[str, int, int], bool]:
        """The no-read skip for a batch's paths, in one query a chunk: ``known(relpath, size,
        mtime_ns)`` says whether some ingested version of the path last looked like that."""
        seen = set()
        sql = "SELECT relpath, seen_size, seen_mtime_ns FROM sources WHERE relpath IN "
        for chunk in in_chunks(sorted(set(relpaths))):
            rows = self.execute(f"{sql}({marks(chunk)})", chunk)
            seen.update((r["relpath"], r["seen_size"], r["seen_mtime_ns"]) for r in rows)
        return lambda relpath, size, mtime_ns: (relpath, size, mtime_ns) in seen

    def pinned(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Source]:
        """The ledger's Source (pinned facts) for each (relpath, sha256) already ingested."""
        out = {}
        sql = f"SELECT {', '.join(SOURCE_COLUMNS)} FROM sources WHERE (relpath, sha256) IN "
        for chunk in in_chunks(list(keys)):
            for r in self.execute(sql + pair_values(chunk), [v for k in chunk for v in k]):
                out[(r["relpath"], r["sha256"])] = source_from_row(r)
        return out

    def holders(self, key: str) -> list[tuple[str, str, str]]:
        """(stage, doc_id, kind) of the documents holding a copy of a source (its key)."""
        out = []
        for kind in ("raw", "parsed", "prompt"):
            rows = self.execute(
                f"SELECT d.stage, d.doc_id FROM attempts a JOIN documents d USING (doc_id)"
                f" WHERE a.{kind}_key = ?",
                (key,),
            )
            out += [(r["stage"], r["doc_id"], kind) for r in rows]
        return out

    def tasks_data(self, tasks: Iterable[tuple[str, str]]) -> TasksData:
        """What planning reads about each task, for many tasks in a few queries: the stored
        facts, sources, documents, and the tasks whose documents name each as their parent."""
        data = TasksData()
        for chunk in in_chunks(sorted(set(tasks))):
            params = [v for task in chunk for v in task]
            pairs = pair_values(chunk)
            for r in self.execute(f"SELECT * FROM tasks WHERE (stage, task_id) IN {pairs}", params):
                data.facts[(r["stage"], r["task_id"])] = task_info_from_row(r)
            sql = f"SELECT {', '.join(SOURCE_COLUMNS)} FROM sources WHERE (stage, task_id) IN "
            for r in self.execute(sql + pairs, params):
                data.sources.setdefault((r["stage"], r["task_id"]), []).append(source_from_row(r))
            sql = (
                f"SELECT {ROW}, {_ATTEMPT_SELECT} FROM documents d JOIN attempts a USING (doc_id)"
                f" WHERE (d.stage, d.task_id) IN {pairs}"
            )
            for r in self.execute(sql, params):
                docs = data.documents.setdefault((r["stage"], r["task_id"]), {})
                docs[r["doc_id"]] = row_to_dict(r)
            ids = [task[1] for task in chunk]
            sql = (
                "SELECT DISTINCT d.stage, d.task_id, a.parent_stage, a.parent_task_id"
                " FROM attempts a JOIN documents d USING (doc_id)"
                f" WHERE a.parent_task_id IN ({marks(ids)})"
            )
            for r in self.execute(sql, ids):
                for stage in [r["parent_stage"]] if r["parent_stage"] else ["essay", "draft"]:
                    parent = (stage, r["parent_task_id"])
                    data.children.setdefault(parent, set()).add((r["stage"], r["task_id"]))
        return data

    def max_raw_versions(self, tasks: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The highest raw version ingested for each task, in one query a chunk (a task with
        no raw file yet is absent)."""
        out = {}
        sql = (
            "SELECT stage, task_id, max(version) AS v FROM sources"
            " WHERE kind = 'raw' AND (stage, task_id) IN {pairs} GROUP BY stage, task_id"
        )
        for chunk in in_chunks(sorted(set(tasks))):
            rows = self.execute(sql.format(pairs=pair_values(chunk)), [v for t in chunk for v in t])
            out.update(((r["stage"], r["task_id"]), r["v"] or 0) for r in rows)
        return out

    def put_sources(self, sources: Iterable[Source], seen: dict | None = None) -> None:
        """Record sources (first facts pinned) and the stat each was last seen with.

        ``seen`` maps a source key to the (size, mtime_ns) of the stat that showed those bytes
        now; without it the source's own facts are the stat.
        """
        ingested = now_iso()
        seen = seen or {}
        rows = []
        for s in sources:
            size, mtime = seen.get(s.key, (s.size, s.mtime_ns))
            rows.append(
                (s.relpath, s.sha256, s.stage, s.kind, s.task_id, s.version, s.size, s.mtime_ns)
                + (ingested, size, mtime)
            )
        self.executemany(_PUT_SOURCE, rows)
        self.execute_in("DELETE FROM problems WHERE relpath IN", [r[0] for r in rows])

    # -- sticky task facts ----------------------------------------------------------------

    def put_tasks(self, infos: Iterable[TaskInfo], tables_digest: str | None = None) -> None:
        """Store facts, with the digest of the tables they were planned with (None: unknown,
        so the next check looks at them)."""
        rows = []
        for info in infos:
            facts = info.facts()
            facts["from_tables"] = int(bool(facts["from_tables"]))
            rows.append(
                [info.stage, info.task_id, *facts.values(), info.fingerprint(), tables_digest]
            )
        self.executemany(_PUT_TASK, rows)

    # -- documents ------------------------------------------------------------------------

    def ok_candidates(self, stage: str, task_id: str) -> list[ParentCandidate]:
        rows = self.execute(
            "SELECT d.doc_id, a.created_at_ns, a.version FROM documents d JOIN attempts a"
            " USING (doc_id) WHERE d.stage = ? AND d.task_id = ? AND d.status = 'ok'",
            (stage, task_id),
        )
        return [ParentCandidate(r["doc_id"], r["created_at_ns"], r["version"]) for r in rows]

    def put_document(self, row: dict, attempt: dict) -> None:
        """Insert or replace one document row and its attempt facts."""
        self.put_documents([(row, attempt)])

    def put_documents(self, docs: Iterable[tuple[dict, dict]]) -> None:
        """Insert or replace document rows and their attempt facts (one statement each)."""
        docs = list(docs)
        meta = DOCUMENT_COLUMNS.index("meta_small")
        rows = []
        for row, attempt in docs:
            values = [row[c] for c in DOCUMENT_COLUMNS]
            values[meta] = sorted_text_json(row["meta_small"])
            values += [attempt[c] for c in DOCUMENT_ORDER_COLUMNS]
            rows.append(values)
        self.executemany(_PUT_DOCUMENT, rows)
        self.executemany(_PUT_ATTEMPT, [[a.get(c) for c in ATTEMPT_COLUMNS] for _, a in docs])

    def pending_tasks(self, created_before: str) -> list[tuple[str, str]]:
        rows = self.execute(
            "SELECT DISTINCT stage, task_id FROM documents"
            " WHERE status = 'pending' AND created_at < ?",
            (created_before,),
        )
        return [(r["stage"], r["task_id"]) for r in rows]

    # -- readers --------------------------------------------------------------------------

    def get(self, doc_id: str) -> dict | None:
        r = self.one(f"SELECT {ROW} FROM documents d WHERE doc_id = ?", (doc_id,))
        return None if r is None else row_to_dict(r)

    def latest_by_task(self, stage: str, task_id: str, statuses: Sequence[str]) -> dict | None:
        sql = latest_sql(self._latest, "d.stage = ? AND d.task_id = ?", marks(statuses))
        r = self.one(sql, [stage, task_id, *statuses])
        return None if r is None else row_to_dict(r)

    def latest_by_logical(self, logical_key_id: str, statuses: Sequence[str]) -> dict | None:
        sql = latest_sql(self._latest, "d.logical_key_id = ?", marks(statuses))
        r = self.one(sql, [logical_key_id, *statuses])
        return None if r is None else row_to_dict(r)


@dataclass
class TasksData:
    """``Index.tasks_data``: what is stored about a set of tasks, by (stage, task_id)."""

    facts: dict = field(default_factory=dict)  # → TaskInfo
    sources: dict = field(default_factory=dict)  # → [Source]
    documents: dict = field(default_factory=dict)  # → {doc_id: row with _attempt facts}
    children: dict = field(default_factory=dict)  # → {(stage, task_id) of children}
