"""The SQLite index: migrations, versions, WAL, readers while writing."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from conftest import V4_TASK_DOCS, check_batch_lookups, insert_v4_task
from docwatch.core.model import Source
from docwatch.errors import IndexCorrupt
from docwatch.store.schema import (
    DOCUMENT_COLUMNS,
    DOCUMENT_ORDER_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLITE_DDL,
    statements,
)
from docwatch.store.sqlite import ROWS_AT_ONCE, open_sqlite, row_chunks
from docwatch.store.sqltext import values_rows_sql
from docwatch.store.sweeps import SweepQueries
from hypothesis import example, given, settings
from hypothesis import strategies as st


def test_fresh_index_has_the_seed_table_wal_and_current_version(tmp_path):
    con = open_sqlite(tmp_path / "db.sqlite").con
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = [r[1] for r in con.execute("PRAGMA table_info(documents)")]
    assert tuple(columns) == DOCUMENT_COLUMNS + DOCUMENT_ORDER_COLUMNS
    indexes = {r[1] for r in con.execute("PRAGMA index_list(documents)")}
    assert {"idx_documents_logical", "idx_documents_stage"} <= indexes


def test_v1_index_is_migrated_in_place(tmp_path):
    db = tmp_path / "db.sqlite"
    con = sqlite3.connect(db, isolation_level=None)
    for statement in statements(MIGRATIONS[0]):
        con.execute(statement)
    con.execute("PRAGMA user_version = 1")
    con.execute("INSERT INTO attempts (doc_id, version, created_at_ns) VALUES ('a', 1, 5)")
    con.close()
    con = open_sqlite(db).con
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    row = con.execute("SELECT doc_id, info_hash FROM attempts").fetchone()
    assert tuple(row) == ("a", None)


def test_v2_index_keeps_its_sources_pinned_and_learns_its_task_facts(tmp_path):
    """An index written by docwatch 0.1 (schema v2): the ledger's stat cache starts at the
    pinned facts, and each task's sticky facts come from its documents."""
    db = tmp_path / "db.sqlite"
    con = sqlite3.connect(db, isolation_level=None)
    for step in (0, 1):
        for statement in statements(MIGRATIONS[step]):
            con.execute(statement)
    con.execute("PRAGMA user_version = 2")
    con.execute(
        "INSERT INTO sources VALUES ('p/t_v1.txt', 'ab', 'draft', 'raw', 't', 1, 9, 77, 'x')"
    )
    con.execute(
        "INSERT INTO documents (doc_id, stage, task_id, template_id, model_id, status,"
        " meta_small) VALUES ('d', 'draft', 't', 'tpl', 'm', 'ok', '{\"provider\": \"p\"}')"
    )
    con.execute(
        "INSERT INTO attempts (doc_id, version, created_at_ns, info_hash) VALUES ('d', 1, 5, 'h')"
    )
    con.close()
    con = open_sqlite(db).con
    assert tuple(con.execute("SELECT seen_size, seen_mtime_ns FROM sources").fetchone()) == (9, 77)
    task = con.execute("SELECT template_id, model_id, provider, info_hash FROM tasks").fetchone()
    assert tuple(task) == ("tpl", "m", "p", "h")


def test_newer_schema_is_refused_with_a_message(tmp_path):
    db = tmp_path / "db.sqlite"
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(IndexCorrupt, match="newer"):
        open_sqlite(db)
    with pytest.raises(IndexCorrupt, match="upgrade docwatch"):
        open_sqlite(db, readonly=True)


def test_not_a_database_is_refused_with_the_recovery_command(tmp_path):
    db = tmp_path / "db.sqlite"
    db.write_bytes(b"\x00garbage" * 512)
    with pytest.raises(IndexCorrupt, match="rebuild-index"):
        open_sqlite(db)


def test_reader_sees_committed_rows_while_a_writer_holds_a_transaction(tmp_path):
    db = tmp_path / "db.sqlite"
    writer = open_sqlite(db)
    writer.set_state("k", "v1")
    reader = open_sqlite(db, readonly=True)
    writer.con.execute("BEGIN IMMEDIATE")
    writer.set_state("k", "v2")
    assert reader.get_state("k") == "v1"  # WAL: readers never wait for the writer
    writer.con.execute("COMMIT")
    assert reader.get_state("k") == "v2"


def test_v3_index_learns_which_tables_its_tasks_were_checked_against(tmp_path):
    """v4: task facts carry the digest of the tables they were checked against (NULL for an
    older index: its first check looks at every task), and the ledger's listing has a
    covering index."""
    db = tmp_path / "db.sqlite"
    con = sqlite3.connect(db, isolation_level=None)
    for step in range(3):
        for statement in statements(MIGRATIONS[step]):
            con.execute(statement)
    con.execute("PRAGMA user_version = 3")
    con.execute("INSERT INTO tasks (stage, task_id, info_hash) VALUES ('draft', 't', 'h')")
    con.close()
    index = open_sqlite(db)
    assert index.con.execute("SELECT tables_digest FROM tasks").fetchone()[0] is None
    assert not index.all_tasks_from("d1")
    plan = index.con.execute(
        "EXPLAIN QUERY PLAN SELECT relpath, sha256, seen_size, seen_mtime_ns FROM sources"
        " WHERE relpath >= 'a/' AND relpath < 'a0' ORDER BY relpath, sha256"
    ).fetchall()
    assert "COVERING INDEX idx_sources_seen" in " ".join(str(r[3]) for r in plan)


def _v4_index_with_one_task(db) -> None:
    """An index written before schema v5 with one task (``conftest.V4_TASK_DOCS``)."""
    con = sqlite3.connect(db, isolation_level=None)
    for step in range(4):
        for statement in statements(MIGRATIONS[step]) + statements(SQLITE_DDL.get(step + 1, "")):
            con.execute(statement)
    con.execute("PRAGMA user_version = 4")
    insert_v4_task(con.execute)
    con.close()


def _latest_and_its_plan(db) -> tuple[str, str, str]:
    """The readers' latest of the task and of its logical key, and the plan of the query the
    reader really ran (captured as it ran)."""
    from docwatch.reader import DocumentsIndex

    with DocumentsIndex(db, db.parent) as idx:
        ran: list[str] = []
        idx._index.con.set_trace_callback(ran.append)
        by_task = idx.get_latest_by_task("draft", "t")["doc_id"]
        by_logical = idx.get_latest_by_logical("lk")["doc_id"]
        idx._index.con.set_trace_callback(None)
        plan = " / ".join(
            str(r[3]) for sql in ran for r in idx._index.con.execute("EXPLAIN QUERY PLAN " + sql)
        )
    return by_task, by_logical, plan


def test_v4_index_learns_versions_and_readers_seek_latest_without_join_or_sort(tmp_path):
    """v5: each document's version beside its row, so "latest" in the model's order (the
    unversioned file oldest, then created_at, then version; superseded never) is one index
    seek.  A reader of the index before its daemon migrates it gets the same answer."""
    db = tmp_path / "db.sqlite"
    _v4_index_with_one_task(db)
    by_task, by_logical, plan = _latest_and_its_plan(db)
    assert (by_task, by_logical) == ("d1", "d1")
    assert "attempts" in plan  # v4: the join, and a sort
    open_sqlite(db).close()  # a writer migrates
    con = sqlite3.connect(db)
    versions = dict(con.execute("SELECT doc_id, version FROM documents"))
    con.close()
    assert versions == {doc_id: version for doc_id, version, _, _ in V4_TASK_DOCS}
    by_task, by_logical, plan = _latest_and_its_plan(db)
    assert (by_task, by_logical) == ("d1", "d1")
    assert "idx_documents_latest " in plan and "idx_documents_latest_logical" in plan
    assert "TEMP B-TREE" not in plan and "attempts" not in plan


def test_a_check_marks_only_the_facts_it_looked_at(tmp_path):
    """Marking tasks as checked against some tables names the facts checked (their
    fingerprint): a task another writer re-planned meanwhile stays unchecked."""
    from docwatch.core.model import TaskInfo

    index = open_sqlite(tmp_path / "db.sqlite")
    infos = [TaskInfo("draft", f"t{i}", "tpl", "m") for i in range(3)]
    with index.transaction():
        index.put_tasks(infos, "old")
    assert index.all_tasks_from("old") and not index.all_tasks_from("new")
    page = index.task_facts_not_from("new", limit=2)
    assert [(i.task_id, h) for i, h in page] == [(i.task_id, i.fingerprint()) for i in infos[:2]]
    rest = index.task_facts_not_from("new", after=("draft", "t1"))
    assert [i.task_id for i, _ in rest] == ["t2"]
    replanned = TaskInfo("draft", "t1", "tpl", "other-model")
    with index.transaction():
        index.put_tasks([replanned], "old")  # another writer, still on the old tables
        index.mark_tasks_checked([(i.stage, i.task_id, i.fingerprint()) for i in infos], "new")
    left = index.task_facts_not_from("new")
    assert [(i.task_id, i.model_id) for i, _ in left] == [("t1", "other-model")]
    assert not index.all_tasks_from("new")
    with index.transaction():
        index.put_tasks([replanned], "new")
    assert index.all_tasks_from("new")


def _source(relpath: str, sha: str, size: int = 10) -> Source:
    return Source("draft", "parsed", relpath, "t", 1, 1_700_000_000 * 10**9, size, sha * 64)


def test_sqlite_streams_the_ledger_and_doc_ids_as_the_paged_reads_do(tmp_path):
    """SQLite reads a folder's ledger and every doc_id in one statement; the rows, their
    order and the folder's bounds are those of the paged reads PostgreSQL uses (a name
    with two versions of its bytes has two rows; sibling folders sharing the prefix stay out)."""
    index = open_sqlite(tmp_path / "i.sqlite")
    folder = "3_generation/draft_responses"
    inside = [f"{folder}/b_v1.txt", f"{folder}/a_v1.txt", f"{folder}/c_v2.txt"]
    outside = [f"{folder}_raw/a_v1.txt", f"{folder}-x/a_v1.txt", f"{folder}0/a_v1.txt"]
    index.put_sources(
        [_source(p, "1") for p in inside + outside]
        + [_source(inside[0], "0", size=11)]  # b_v1.txt's other bytes: sorts before "1"
    )
    streamed = [tuple(r) for r in index.ledger_in_folder(folder, page=2)]
    paged = [tuple(r[:3]) for r in SweepQueries.ledger_in_folder(index, folder, page=2)]
    assert streamed == paged
    assert [(relpath, size) for relpath, size, _ in streamed] == [
        (f"{folder}/a_v1.txt", 10),
        (f"{folder}/b_v1.txt", 11),
        (f"{folder}/b_v1.txt", 10),
        (f"{folder}/c_v2.txt", 10),
    ]
    ids = [f"{i:016d}" for i in range(7)]
    index.executemany(
        "INSERT INTO documents (doc_id, stage, task_id, status) VALUES (?, 'draft', ?, 'ok')",
        [(d, d) for d in reversed(ids)],
    )
    assert list(index.doc_ids(page=3)) == list(SweepQueries.doc_ids(index, page=3)) == ids
    index.close()


def test_a_batch_asks_the_ledger_and_the_raw_versions_once_for_all_its_files(tmp_path):
    index = open_sqlite(tmp_path / "i.sqlite")
    try:
        check_batch_lookups(index)
    finally:
        index.close()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 6), st.sampled_from("ab"), st.integers(-9, 9)),
        min_size=1,
        max_size=400,
    )
)
@example(rows=[(i % 7, "ab"[i % 2], i % 19 - 9) for i in range(300)])  # three chunks
def test_many_rows_at_once_upsert_as_one_row_at_a_time(rows):
    """The SQLite index inserts many rows a statement: the table must end as one statement a
    row leaves it, a key met again in the same call updating the row it inserted before."""
    upsert = (
        "INSERT INTO t (k, j, v) VALUES (?, ?, ?)"
        " ON CONFLICT (k, j) DO UPDATE SET v = t.v * 3 + excluded.v, n = t.n + 1"
    )
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        for one_a_row in (True, False):
            index = open_sqlite(Path(tmp) / f"{one_a_row}.sqlite")
            index.execute("CREATE TABLE t (k INT, j TEXT, v INT, n INT DEFAULT 0, UNIQUE (k, j))")
            with index.transaction():
                if one_a_row:
                    index.con.executemany(upsert, rows)
                else:
                    assert values_rows_sql(upsert, 2) is not None
                    index.executemany(upsert, rows)
            tables.append(index.all("SELECT * FROM t ORDER BY rowid"))
            index.close()
    assert tables[0] == tables[1]


@given(count=st.integers(0, 1000), most=st.integers(0, 500))
def test_row_chunks_cover_every_row_once_in_a_few_sizes(count, most):
    rows = list(range(count))
    chunks = list(row_chunks(rows, most))
    assert [r for _, chunk in chunks for r in chunk] == rows
    cap = max(1, min(most, ROWS_AT_ONCE))
    assert all(size == len(chunk) and size <= cap for size, chunk in chunks)
    assert all(size & (size - 1) == 0 for size, _ in chunks)  # powers of two: few texts
    assert len(chunks) <= count // (1 << (cap.bit_length() - 1)) + cap.bit_length()


def test_only_a_one_row_insert_is_taken_many_rows_at_once():
    assert values_rows_sql("INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT DO NOTHING", 3) == (
        "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?) ON CONFLICT DO NOTHING"
    )
    for text in (
        "UPDATE t SET a = ? WHERE b = ?",
        "DELETE FROM t WHERE a = ?",
        "INSERT INTO t (a, b) VALUES (?, now())",
        "INSERT INTO t (a) SELECT ? WHERE true",
    ):
        assert values_rows_sql(text, 3) is None
