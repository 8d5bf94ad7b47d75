"""The SQLite index: migrations, versions, WAL, readers while writing."""

from __future__ import annotations

import sqlite3

import pytest
from docwatch.errors import IndexCorrupt
from docwatch.store import index as ix


def test_fresh_index_has_the_seed_table_wal_and_current_version(tmp_path):
    con = ix.connect(tmp_path / "db.sqlite")
    assert con.execute("PRAGMA user_version").fetchone()[0] == ix.SCHEMA_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = [r[1] for r in con.execute("PRAGMA table_info(documents)")]
    assert tuple(columns) == ix.DOCUMENT_COLUMNS
    indexes = {r[1] for r in con.execute("PRAGMA index_list(documents)")}
    assert {"idx_documents_logical", "idx_documents_stage"} <= indexes


def test_v1_index_is_migrated_in_place(tmp_path):
    db = tmp_path / "db.sqlite"
    con = sqlite3.connect(db, isolation_level=None)
    for statement in ix.MIGRATIONS[0].split(";"):
        if statement.strip():
            con.execute(statement)
    con.execute("PRAGMA user_version = 1")
    con.execute("INSERT INTO attempts (doc_id, version, created_at_ns) VALUES ('a', 1, 5)")
    con.close()
    con = ix.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == ix.SCHEMA_VERSION
    row = con.execute("SELECT doc_id, info_hash FROM attempts").fetchone()
    assert tuple(row) == ("a", None)


def test_newer_schema_is_refused_with_a_message(tmp_path):
    db = tmp_path / "db.sqlite"
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {ix.SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(IndexCorrupt, match="newer"):
        ix.connect(db)
    with pytest.raises(IndexCorrupt, match="upgrade docwatch"):
        ix.connect(db, readonly=True)


def test_not_a_database_is_refused_with_the_recovery_command(tmp_path):
    db = tmp_path / "db.sqlite"
    db.write_bytes(b"\x00garbage" * 512)
    with pytest.raises(IndexCorrupt, match="rebuild-index"):
        ix.connect(db)


def test_reader_sees_committed_rows_while_a_writer_holds_a_transaction(tmp_path):
    db = tmp_path / "db.sqlite"
    writer = ix.connect(db)
    ix.set_state(writer, "k", "v1")
    reader = ix.connect(db, readonly=True)
    writer.execute("BEGIN IMMEDIATE")
    ix.set_state(writer, "k", "v2")
    assert ix.get_state(reader, "k") == "v1"  # WAL: readers never wait for the writer
    writer.execute("COMMIT")
    assert ix.get_state(reader, "k") == "v2"
